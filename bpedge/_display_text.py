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
