"""Text that comes from the user's file system or from a file bpedge reads (frame names, paths,
labels in a record), made safe for the places bpedge writes it.

A file name may hold bytes that are not UTF-8 (Python gives them as lone surrogates: OpenCV's
``putText`` crashed the process on one, and the UTF-8 tables refused to be written), control
characters (an ESC sequence printed as it is recolours or retitles the user's terminal), or
start like a spreadsheet formula (``=cmd|...`` in a CSV cell runs when the table is opened)."""

from __future__ import annotations

#: First characters a spreadsheet reads as the start of a formula (OWASP, "CSV Injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with undecodable bytes and control characters shown as backslash escapes
    (``\\udcff``, ``\\x1b``), everything else as it is; ``keep_newlines`` leaves line breaks
    (a message that lists one problem per line)."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or (keep_newlines and c == "\n")
                   else c.encode("unicode_escape").decode("ascii") for c in text)


def ascii_printable(text: str) -> str:
    """:func:`printable`, and non-ASCII characters escaped too (OpenCV's Hershey fonts draw ASCII
    only)."""
    return printable(text).encode("ascii", "backslashreplace").decode("ascii")


def spreadsheet_cell(text: str) -> str:
    """A printable CSV text cell that a spreadsheet shows as text, never runs as a formula: a
    leading ``'`` is added where the cell would start with ``= + - @``, a tab or a CR."""
    text = printable(text)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


#: ASCII punctuation that Markdown (CommonMark and GitHub's extensions) or the HTML inside it
#: gives a meaning in a line: emphasis, code, links, images, raw HTML, entities, headings, lists,
#: strikethrough, math. ``|`` only splits table cells: :func:`markdown_table_cell` escapes it
#: (escaping it twice would leave ``\\|``, an escaped backslash and then a live ``|``).
_MARKDOWN_SPECIAL = frozenset("\\`*_{}[]()<>#+-.!~&$")


def markdown_text(text: str) -> str:
    """``text`` as literal Markdown on one line: :func:`printable` (so a line break shows as
    ``\\n`` and cannot start a heading or a raw HTML block), then every character Markdown could
    read as syntax backslash-escaped, so a path such as ``[x](javascript:...)`` or
    ``<script>`` shows as those characters."""
    return "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in printable(text))


def markdown_code(text: str) -> str:
    """``text`` as a Markdown code span on one line (:func:`printable`), fenced with more
    backticks than any run inside it and padded where it starts or ends with a backtick or a
    space, so the span can neither end early nor lose a character (CommonMark 6.1). Nothing in a
    code span is read as a link, emphasis or HTML. In a table cell, ``|`` still needs
    :func:`markdown_table_cell`."""
    text = printable(text)
    if not text:
        return ""
    fence = "`" * (_longest_backtick_run(text) + 1)
    pad = " " if text[0] in "` " or text[-1] in "` " else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_code_block(text: str) -> str:
    """``text`` as a fenced Markdown code block whose fence (at least three backticks) is longer
    than any backtick run inside, so no line of ``text`` can close it; control characters other
    than line breaks are shown escaped (:func:`printable`)."""
    text = printable(text, keep_newlines=True).rstrip("\n")
    fence = "`" * max(3, _longest_backtick_run(text) + 1)
    return f"{fence}\n{text}\n{fence}"


def markdown_table_cell(markdown: str) -> str:
    """Markdown (bpedge's own, or user text through :func:`markdown_text` or
    :func:`markdown_code`) made one table cell: every ``|`` escaped, even inside a code span,
    where GitHub's tables still split on it, and line breaks replaced by spaces."""
    return markdown.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _longest_backtick_run(text: str) -> int:
    run = longest = 0
    for c in text:
        run = run + 1 if c == "`" else 0
        longest = max(longest, run)
    return longest
