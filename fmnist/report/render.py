"""Render a report document (headings, paragraphs, tables, figures) as Markdown or HTML.

The document is a flat list of blocks built elsewhere; this module only writes text.
Both renderers show a missing value the same way: a "gap [n]" cell whose reason is
listed under its table. The HTML is self-contained: inline CSS and images embedded as
``data:`` URIs, so it opens without a network and makes no request.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Cell:
    """A table cell: its text, or a gap with the reason it is empty."""

    text: str = ""
    gap: str | None = None
    seed: bool = False  # copied from the seed report, not measured here
    header: bool = False  # a row label


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Preformatted:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]]
    caption: str = ""
    notes: list[str] = field(default_factory=list)  # free text under the table
    css_class: str = ""


@dataclass(frozen=True)
class Image:
    path: Path  # relative to the report directory
    caption: str


Block = Heading | Paragraph | Preformatted | Table | Image


def gap_footnotes(table: Table) -> tuple[list[list[str]], list[str]]:
    """Cell texts with gaps replaced by numbered references, and the numbered reasons.

    The same reason gets the same number within a table, so a run without a benchmark
    has one footnote, not one per cell.
    """
    numbers: dict[str, int] = {}
    texts = []
    for row in table.rows:
        line = []
        for cell in row:
            if cell.gap is not None:
                number = numbers.setdefault(cell.gap, len(numbers) + 1)
                line.append(f"gap [{number}]")
            else:
                line.append(cell.text)
        texts.append(line)
    return texts, [f"[{n}] {reason}" for reason, n in numbers.items()]


# --------------------------------------------------------------------------- Markdown


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    """The document as GitHub-flavoured Markdown (figures as relative image links)."""
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            lines += [block.text, ""]
        elif isinstance(block, Preformatted):
            lines += ["```", block.text, "```", ""]
        elif isinstance(block, Image):
            lines += [f"![{block.caption}]({block.path.as_posix()})", ""]
        elif isinstance(block, Table):
            if block.caption:
                lines += [block.caption, ""]
            texts, footnotes = gap_footnotes(block)
            lines.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
            align = ["---" if _label_column(block, i) else "--:" for i in range(len(block.header))]
            lines.append("| " + " | ".join(align) + " |")
            for row, cells in zip(texts, block.rows, strict=True):
                shown = [
                    f"**{_md_cell(t)}**" if c.header and t else _md_cell(t)
                    for t, c in zip(row, cells, strict=True)
                ]
                lines.append("| " + " | ".join(shown) + " |")
            lines.append("")
            for note in [*footnotes, *block.notes]:
                lines += [note, ""]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- HTML

CSS = """
body { font-family: "DejaVu Sans", Arial, Helvetica, sans-serif; margin: 24px auto;
       max-width: 1500px; padding: 0 16px; color: #1d2330; background: #ffffff; }
h1 { font-size: 26px; border-bottom: 3px solid #0068b5; padding-bottom: 6px; }
h2 { font-size: 21px; margin-top: 34px; border-bottom: 1px solid #c9d3e0; }
h3 { font-size: 17px; margin-top: 24px; }
p { line-height: 1.45; }
table { border-collapse: collapse; margin: 10px 0 6px 0; font-size: 13px; }
th, td { border: 1px solid #c9d3e0; padding: 4px 8px; text-align: right;
         vertical-align: top; }
td { white-space: nowrap; }
td.text { white-space: normal; }
.scroll { overflow-x: auto; max-width: 100%; }
th { background: #e8eef6; }
td.label, th.label { text-align: left; font-weight: 600; background: #f5f7fa; }
td.text { text-align: left; }
table.results { font-size: 12px; }
table.results td, table.results th { white-space: normal; padding: 3px 6px; }
table.results td.label { min-width: 150px; }
td.seed { background: #fff8e1; color: #5d4b00; }
th.seed { background: #ffe9a8; }
td.gap { background: #fde8e8; color: #9b1c1c; font-style: italic; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 4px 0; }
.notes { font-size: 12px; color: #444; margin: 2px 0 14px 0; }
.notes p { margin: 2px 0; }
.figures { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
figure { margin: 12px 0 20px 0; max-width: 100%; }
figure img { max-width: 100%; max-height: 560px; border: 1px solid #d6dde8; }
figcaption { font-size: 12px; color: #444; }
pre { background: #f5f7fa; padding: 8px; font-size: 12px; overflow-x: auto; }
"""


def _image_uri(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def to_html(blocks: list[Block], base: Path, title: str) -> str:
    """The document as one HTML page: inline CSS, figures embedded from ``base``."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        # Nothing on this page may leave it: no scripts, no fetches, only data: images.
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        f"<title>{html.escape(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
    ]
    previous = None
    for block in blocks:
        # Consecutive figures share a row (wrapping) instead of a page each.
        if isinstance(previous, Image) and not isinstance(block, Image):
            out.append("</div>")
        if isinstance(block, Image) and not isinstance(previous, Image):
            out.append('<div class="figures">')
        previous = block
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            out.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Preformatted):
            out.append(f"<pre>{html.escape(block.text)}</pre>")
        elif isinstance(block, Image):
            out.append(
                f'<figure><img src="{_image_uri(base / block.path)}" '
                f'alt="{html.escape(block.caption)}">'
                f"<figcaption>{html.escape(block.caption)}</figcaption></figure>"
            )
        elif isinstance(block, Table):
            out.append(_html_table(block))
    if isinstance(previous, Image):
        out.append("</div>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def _html_table(table: Table) -> str:
    texts, footnotes = gap_footnotes(table)
    css = f' class="{table.css_class}"' if table.css_class else ""
    parts = [f'<div class="scroll"><table{css}>']
    if table.caption:
        parts.append(f"<caption>{html.escape(table.caption)}</caption>")
    header_cells = []
    for i, name in enumerate(table.header):
        classes = ["label"] if _label_column(table, i) else []
        if name.endswith("· seed"):
            classes.append("seed")
        attr = f' class="{" ".join(classes)}"' if classes else ""
        header_cells.append(f"<th{attr}>{html.escape(name)}</th>")
    parts.append("<thead><tr>" + "".join(header_cells) + "</tr></thead><tbody>")
    for row, cells in zip(texts, table.rows, strict=True):
        tds = []
        for text, cell in zip(row, cells, strict=True):
            classes = []
            if cell.header:
                classes.append("label")
            elif cell.gap is not None:
                classes.append("gap")
            elif cell.seed:
                classes.append("seed")
            if not cell.header and cell.gap is None and not _numeric(text):
                classes.append("text")
            attr = f' class="{" ".join(classes)}"' if classes else ""
            title = f' title="{html.escape(cell.gap)}"' if cell.gap else ""
            tds.append(f"<td{attr}{title}>{html.escape(text)}</td>")
        parts.append("<tr>" + "".join(tds) + "</tr>")
    parts.append("</tbody></table></div>")
    notes = [*footnotes, *table.notes]
    if notes:
        parts.append(
            '<div class="notes">' + "".join(f"<p>{html.escape(n)}</p>" for n in notes) + "</div>"
        )
    return "\n".join(parts)


def _label_column(table: Table, index: int) -> bool:
    """Whether a column holds row labels (left-aligned) rather than values."""
    if not table.rows:
        return index == 0
    return table.rows[0][index].header


def _numeric(text: str) -> bool:
    stripped = text.replace(",", "").replace("%", "").replace("×", "").split(" ")[0]
    try:
        float(stripped.lstrip("+"))
    except ValueError:
        return False
    return True
