"""A report as a list of blocks, rendered both to Markdown and to a standalone HTML page.

Writing the report once as data and rendering it twice keeps report.md and report.html the same
document, with no Markdown dependency. Inline text (headings, paragraphs, items, table cells,
captions) is Markdown that may hold code spans and backslash escapes only; text from outside
bpedge (a path, a file name) enters it through :func:`bpedge._display_text.markdown_code` or
:func:`~bpedge._display_text.markdown_text`, which both renderers read back as that text.
"""

from __future__ import annotations

import html
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

from bpedge._display_text import markdown_code_block, markdown_table_cell

__all__ = ["Block", "Code", "Heading", "Image", "Items", "Paragraph", "Table", "to_html",
           "to_markdown"]


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Items:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Image:
    path: str       # relative to the report
    caption: str


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.headers):
                raise ValueError(f"table row {row} has {len(row)} cells, headers {len(self.headers)}")


Block = Heading | Paragraph | Items | Code | Image | Table


def to_markdown(blocks: Sequence[Block]) -> str:
    """GitHub-flavoured Markdown: one blank line between blocks."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, Paragraph):
            out.append(b.text)
        elif isinstance(b, Items):
            out.append("\n".join(f"- {item}" for item in b.items))
        elif isinstance(b, Code):
            out.append(markdown_code_block(b.text))
        elif isinstance(b, Image):
            out.append(f"![{b.caption}]({b.path})\n\n*{b.caption}*")
        elif isinstance(b, Table):
            lines = ["| " + " | ".join(markdown_table_cell(h) for h in b.headers) + " |",
                     "|" + "|".join("---" for _ in b.headers) + "|"]
            lines += ["| " + " | ".join(markdown_table_cell(c) for c in row) + " |"
                      for row in b.rows]
            out.append("\n".join(lines))
        else:
            raise TypeError(f"unknown block {type(b).__name__}")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Inline Markdown as HTML: code spans (a run of N backticks up to the next run of exactly
    N, CommonMark 6.1) and backslash escapes; everything else is text."""
    out: list[str] = []
    plain: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in string.punctuation:
            plain.append(text[i + 1])
            i += 2
            continue
        if text[i] != "`":
            plain.append(text[i])
            i += 1
            continue
        fence = re.match(r"`+", text[i:]).group()  # type: ignore[union-attr]
        close = re.compile(rf"(?<!`){fence}(?!`)").search(text, i + len(fence))
        if close is None:  # no closing run: the backticks are text
            plain.append(fence)
            i += len(fence)
            continue
        out.append(html.escape("".join(plain), quote=False))
        plain = []
        out.append(f"<code>{html.escape(_code_content(text[i + len(fence):close.start()]))}"
                   "</code>")
        i = close.end()
    out.append(html.escape("".join(plain), quote=False))
    return "".join(out)


def _code_content(raw: str) -> str:
    # One space each side is padding when both are there (so a span may start with a backtick).
    if len(raw) >= 2 and raw[0] == raw[-1] == " " and raw.strip(" "):
        return raw[1:-1]
    return raw


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; }
th { background: #f0f0f0; }
td { font-variant-numeric: tabular-nums; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-style: italic; font-size: 0.9em; }
"""


def to_html(blocks: Sequence[Block], title: str) -> str:
    """A standalone HTML page (images referenced by their relative paths)."""
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Items):
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Code):
            body.append(f"<pre><code>{html.escape(b.text)}</code></pre>")
        elif isinstance(b, Image):
            src = html.escape(b.path)
            body.append(f'<figure><img src="{src}" alt="{html.escape(b.caption)}">'
                        f"<figcaption>{_inline(b.caption)}</figcaption></figure>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.headers)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                           for row in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            raise TypeError(f"unknown block {type(b).__name__}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
