"""The documentation stands alone and says what the code writes.

- README.md is short (≤ 150 lines) and its first commands are the Makefile's `demo` and `test`;
- nothing in README.md or docs/ refers outside the repository, and every relative link
  (and anchor) lands on a file (and heading) that exists;
- every TensorBoard tag the board writes is in docs/tensorboard.md's table;
- every `docs/science.md §N` the code cites is a section of docs/science.md;
- every Python block of the documentation parses, and imports only what rlattr exports.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from rlattr.training.board import TAGS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 150

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
CITATION = re.compile(r"docs/science\.md((?:(?:,\s*|\s+and\s+|\s+)§\d+[a-z]?)+)")


def documentation_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def prose(path: Path) -> str:
    """The file without its fenced code blocks (commands and code are not links)."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for _, text in HEADING.findall(prose(path)):
        base = slug(text)
        name, n = base, 0
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def relative_links(path: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(prose(path))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


def test_the_documentation_exists() -> None:
    assert README.is_file()
    for page in ("index.md", "science.md", "results.md", "tensorboard.md"):
        assert (DOCS / page).is_file(), f"docs/{page} is missing"


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines; at most {MAX_README_LINES} (move detail to docs/)"
    )


def test_readme_starts_with_the_two_make_targets() -> None:
    first_block = FENCE.search(README.read_text(encoding="utf-8"))
    assert first_block, "README.md has no command block"
    commands = [
        line.split("#")[0].strip()
        for line in first_block.group().splitlines()[1:-1]
        if line.split("#")[0].strip()
    ]
    assert commands == ["make demo", "make test"], commands
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"Makefile lacks {target}"


@pytest.mark.parametrize("path", documentation_files(), ids=lambda p: p.name)
def test_nothing_refers_outside_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "shared/" not in text, f"{path.name} refers to shared/, outside the repository"
    assert "SCIENCE.md" not in text, f"{path.name} refers to an internal file"
    for target in relative_links(path):
        file_part = target.split("#")[0]
        if not file_part:
            continue
        assert not file_part.startswith("/"), f"{path.name}: absolute link {target}"
        resolved = (path.parent / file_part).resolve()
        assert resolved.is_relative_to(ROOT), f"{path.name}: {target} leaves the repository"


@pytest.mark.parametrize("path", documentation_files(), ids=lambda p: p.name)
def test_every_relative_link_lands(path: Path) -> None:
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        missing_anchor = bool(anchor) and destination.suffix == ".md"
        if not destination.exists() or (missing_anchor and anchor not in anchors(destination)):
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)}: broken links {broken}"


def test_every_tensorboard_tag_is_in_the_docs_table() -> None:
    text = (DOCS / "tensorboard.md").read_text(encoding="utf-8")
    missing = [tag for tag, meaning in TAGS.items() if f"| `{tag}` | {meaning} |" not in text]
    assert not missing, f"docs/tensorboard.md's table lacks {missing}"


def test_tag_meanings_do_not_break_the_markdown_table() -> None:
    assert not [tag for tag, meaning in TAGS.items() if "|" in meaning]


def science_sections() -> set[str]:
    return {
        match
        for _, text in HEADING.findall(prose(DOCS / "science.md"))
        for match in re.findall(r"^§(\d+[a-z]?)\.", text)
    }


def test_science_keeps_the_cited_section_numbers() -> None:
    assert {"1", "2", "3", "4", "5", "5b", "6"} <= science_sections()


def test_every_citation_of_science_lands_on_a_section() -> None:
    sections = science_sections()
    cited: dict[str, set[str]] = {}
    for folder in ("rlattr", "experiments", "tests", "agents", "envs"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in (".py", ".yaml", ".md") or not path.is_file():
                continue
            for group in CITATION.findall(path.read_text(encoding="utf-8", errors="replace")):
                for number in re.findall(r"§(\d+[a-z]?)", group):
                    cited.setdefault(number, set()).add(str(path.relative_to(ROOT)))
    assert cited, "no citation of docs/science.md found: is the pattern still right?"
    unknown = {number: sorted(paths) for number, paths in cited.items() if number not in sections}
    assert not unknown, f"citations of sections docs/science.md lacks: {unknown}"


@pytest.mark.parametrize("path", documentation_files(), ids=lambda p: p.name)
def test_python_blocks_parse(path: Path) -> None:
    for block in PYTHON_BLOCK.findall(path.read_text(encoding="utf-8")):
        ast.parse(block)


def rlattr_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every ``from rlattr... import name`` in the file's Python blocks."""
    found = []
    for block in PYTHON_BLOCK.findall(path.read_text(encoding="utf-8")):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "rlattr":
                found += [(node.module, alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize("path", documentation_files(), ids=lambda p: p.name)
def test_documented_imports_exist(path: Path) -> None:
    missing = []
    for module_name, name in rlattr_imports(path):
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            if (err.name or "").split(".")[0] == "rlattr":
                missing.append(module_name)
                continue
            pytest.skip(f"{module_name} needs an optional extra ({err.name})")
        if not hasattr(module, name):
            missing.append(f"{module_name}.{name}")
    assert not missing, f"{path.relative_to(ROOT)} imports what rlattr does not export: {missing}"


def test_the_slug_matches_github() -> None:
    assert slug("§2. Local influence of a record") == "2-local-influence-of-a-record"
    assert slug("The IIF paper's suite, reproduced") == "the-iif-papers-suite-reproduced"
    assert slug("`rlattr formation`") == "rlattr-formation"
