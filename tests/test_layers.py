"""The package's layers: a lower layer never imports a higher one (ARCHITECTURE.md).

Every ``import`` in every module of ``rlattr`` (module level and inside functions) is read
with ``ast``. A module may import its own sub-package and the sub-packages of lower layers;
sub-packages of one layer (training and analysis) do not import each other.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

import rlattr

PACKAGE = Path(rlattr.__file__).resolve().parent

# Unit (the first name below rlattr) → layer. rlattr/__init__.py is the facade above all.
LAYERS = {
    "errors": 0,
    "argtypes": 0,
    "versions": 0,
    "extractors": 0,
    "envs": 0,
    "agents": 0,
    "record": 1,
    "scoring": 2,
    "analysis": 3,
    "training": 3,
    "llm": 3,
    "sweep": 4,
    # The command line wires every command, `rlattr sweep` and `compare` included: it sits
    # above rlattr.sweep rather than beside it.
    "cli": 5,
}


def _source_files(package: Path = PACKAGE) -> list[tuple[str, Path]]:
    """(unit, file) for every module of the package, the facade excepted."""
    files = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if relative == Path("__init__.py"):
            continue
        files.append((relative.parts[0].removesuffix(".py"), path))
    return files


def _imported_units(path: Path) -> list[tuple[int, str]]:
    """(line, unit) for every import of an rlattr module in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "rlattr":
                names = [f"rlattr.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "rlattr":
                found.append((node.lineno, parts[1] if len(parts) > 1 else "<facade>"))
    return found


def layering_violations(package: Path = PACKAGE) -> list[str]:
    violations = []
    for unit, path in _source_files(package):
        for line, imported in _imported_units(path):
            where = f"{path.relative_to(package.parent)}:{line}"
            if imported not in LAYERS:
                violations.append(f"{where} imports rlattr.{imported}, which has no layer")
            elif imported != unit and LAYERS[imported] >= LAYERS[unit]:
                violations.append(
                    f"{where}: {unit} (layer {LAYERS[unit]}) imports {imported} "
                    f"(layer {LAYERS[imported]})"
                )
    return violations


def test_every_unit_has_a_layer() -> None:
    units = {unit for unit, _ in _source_files()}
    assert units <= set(LAYERS), sorted(units - set(LAYERS))


def test_no_layer_imports_a_higher_one() -> None:
    assert layering_violations() == []


def test_the_check_catches_upward_and_sideways_imports(tmp_path: Path) -> None:
    copy = tmp_path / "rlattr"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    # A lazy import inside a function must be seen, not only module-level ones.
    (copy / "record" / "probe.py").write_text("def f():\n    import rlattr.training.ppo\n")
    (copy / "training" / "probe.py").write_text("from rlattr import analysis\n")
    assert sorted(v.split(": ", 1)[1] for v in layering_violations(copy)) == [
        "record (layer 1) imports training (layer 3)",
        "training (layer 3) imports analysis (layer 3)",
    ]


@pytest.mark.parametrize("unit", ["record", "scoring", "training"])
def test_training_and_lower_layers_never_import_analysis(unit: str) -> None:
    for path in (PACKAGE / unit).rglob("*.py"):
        assert all(imported != "analysis" for _, imported in _imported_units(path)), path
