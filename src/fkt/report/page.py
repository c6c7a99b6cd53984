"""One page with everything a grid produced: results.md and every figure, readable offline."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from fkt.io import atomic_write_text


def write_report(out: Path, markdown: str) -> tuple[Path, Path]:
    """report.md (links the PNGs) and report.html (PNGs embedded, no network needed)."""
    out = Path(out)
    figures = sorted((out / "figures").glob("*.png"))
    md = ["# fkt report", "", markdown, "## Figures", ""]
    md += [f"### {f.stem}\n\n![{f.stem}](figures/{f.name})\n" for f in figures]
    atomic_write_text(out / "report.md", "\n".join(md))
    body = ["<h1>fkt report</h1>", markdown_tables_to_html(markdown), "<h2>Figures</h2>"]
    for f in figures:
        data = base64.b64encode(f.read_bytes()).decode()
        body.append(f"<h3>{html.escape(f.stem)}</h3><img src='data:image/png;base64,{data}' style='max-width:100%'>")
    page = ("<!doctype html><meta charset='utf-8'><title>fkt report</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}</style>" + "".join(body))
    atomic_write_text(out / "report.html", page)
    return out / "report.md", out / "report.html"


def markdown_tables_to_html(markdown: str) -> str:
    """Just enough Markdown for results.md: headings, pipe tables, paragraphs."""
    parts, table = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                table.append([html.escape(c.strip()) for c in line.strip("|").split("|")])
            continue
        if table:
            head, *rows = table
            parts.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows) + "</table>")
            table = []
        if line.startswith("## "):
            parts.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.strip():
            parts.append(f"<p>{html.escape(line)}</p>")
    return "\n".join(parts)
