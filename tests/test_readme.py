"""The README documents what rlattr writes: every TensorBoard tag is in its table."""

from __future__ import annotations

from pathlib import Path

from rlattr.training.board import TAGS

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_tensorboard_tag_is_in_the_readme_table() -> None:
    text = README.read_text()
    missing = [tag for tag, meaning in TAGS.items() if f"| `{tag}` | {meaning} |" not in text]
    assert not missing, f"README's TensorBoard table lacks {missing}"


def test_tag_meanings_do_not_break_the_markdown_table() -> None:
    assert not [tag for tag, meaning in TAGS.items() if "|" in meaning]
