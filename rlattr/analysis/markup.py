"""Names the user chose (run paths, preset, task, arm and rule names) inside Markdown reports.

A name goes into a report as literal text: ``markdown_text`` makes the characters that
Markdown or the HTML it may carry would read as markup show as themselves, and keeps the
name on one line, so that a name can neither inject HTML (``<img src=x onerror=...>`` in a
run path) nor split a table row (a ``|``) or open a code span or link. HTML reports use
``html.escape`` (``rlattr.analysis.diagnose``); Markdown reports use this.
"""

from __future__ import annotations

import re

__all__ = ["markdown_text"]

# Markdown's escapes first (the backslash itself before the rest), then HTML's entities:
# a backslash would not stop an HTML tag where a renderer passes HTML through.
_MARKDOWN = {"\\": "\\\\", "`": "\\`", "|": "\\|", "[": "\\[", "]": "\\]"}
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_REPLACE = {**_MARKDOWN, **_HTML}
_SPECIAL = re.compile("|".join(re.escape(c) for c in _REPLACE))
# Line breaks (they would end a table row or a heading) and other control characters.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


def markdown_text(value: object) -> str:
    """``value`` as one line of Markdown text that renders as ``str(value)``: ``\\ ` | [ ]``
    backslash-escaped, ``& < >`` as HTML entities, line breaks and control characters as
    one space. Safe in prose, headings and table cells alike."""
    text = _CONTROL.sub(" ", str(value))
    return _SPECIAL.sub(lambda match: _REPLACE[match.group(0)], text)
