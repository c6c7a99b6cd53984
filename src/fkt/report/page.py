"""One page with everything a grid produced: the verdicts, every figure and results.md, readable offline."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from fkt.io import atomic_write_text

# The order a reader wants the figures in: the answer across axis values first, then how training went,
# then what the models look at and confuse, then their representations. Matched on the file name.
FIGURE_ORDER = ("-accuracy-vs-", "-learning-curves", "-gradcam", "-confusion", "-tsne")


def reading_order(figures: list[Path]) -> list[Path]:
    """Figures by kind in FIGURE_ORDER (others last), then by name."""
    def kind(figure: Path) -> int:
        return next((i for i, part in enumerate(FIGURE_ORDER) if part in figure.stem), len(FIGURE_ORDER))
    return sorted(figures, key=lambda f: (kind(f), f.name))


def write_report(out: Path, markdown: str, verdicts: str = "") -> tuple[Path, Path]:
    """report.md (links the PNGs) and report.html (PNGs embedded, no network needed): the verdicts,
    then the figures in reading order, then the tables of results.md."""
    out = Path(out)
    figures = reading_order(list((out / "figures").glob("*.png")))
    md = ["# fkt report", "", verdicts, "## Figures", ""]
    md += [f"### {f.stem}\n\n![{f.stem}](figures/{f.name})\n" for f in figures]
    atomic_write_text(out / "report.md", "\n".join(md + [markdown]))
    body = ["<h1>fkt report</h1>", markdown_tables_to_html(verdicts), "<h2>Figures</h2>"]
    for f in figures:
        data = base64.b64encode(f.read_bytes()).decode()
        body.append(f"<h3>{html.escape(f.stem)}</h3><img src='data:image/png;base64,{data}' style='max-width:100%'>")
    body.append(markdown_tables_to_html(markdown))
    page = ("<!doctype html><meta charset='utf-8'><title>fkt report</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}</style>" + "".join(body))
    atomic_write_text(out / "report.html", page)
    return out / "report.md", out / "report.html"


def inline(text: str) -> str:
    """Escaped text with `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def markdown_tables_to_html(markdown: str) -> str:
    """Just enough Markdown for results.md and the verdicts: headings, pipe tables, bullets, paragraphs."""
    parts, table, items = [], [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                table.append([html.escape(c.strip()) for c in line.strip("|").split("|")])
            continue
        if line.startswith("- "):
            items.append(f"<li>{inline(line[2:])}</li>")
            continue
        if table:
            head, *rows = table
            parts.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows) + "</table>")
            table = []
        if items:
            parts.append("<ul>" + "".join(items) + "</ul>")
            items = []
        if line.startswith("## "):
            parts.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.strip():
            parts.append(f"<p>{inline(line)}</p>")
    return "\n".join(parts)
