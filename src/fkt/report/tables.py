"""Results as CSV (one row per run) and Markdown (mean ± std per dataset x method)."""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from pathlib import Path

from fkt.io import atomic_write_text

METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro")


def flat_row(run: dict) -> dict:
    row = {"dataset": run["dataset"], "method": run["method"], "seed": run["seed"],
           "val_accuracy": run["val"]["accuracy"]}
    row.update({m: run["test"][m] for m in METRICS + ("qwk",) if m in run["test"]})
    row.update({k: run["compute"][k] for k in ("epochs", "image_passes", "train_seconds")})
    return row


def mean_std(values: list[float], scale: float = 100.0) -> str:
    mean = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {statistics.stdev(values) * scale:.2f}"


def results_table(runs: list[dict]) -> str:
    """One Markdown row per (dataset, method): test metrics as mean ± std over seeds, and compute."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["dataset"], run["method"])].append(flat_row(run))
    ordinal = any("qwk" in r for rows in groups.values() for r in rows)
    head = ["dataset", "method", "n", "accuracy %", "precision %", "recall %", "F1 %"]
    head += ["QWK %"] if ordinal else []
    head += ["epochs", "image passes", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (dataset, method), rows in groups.items():
        cells = [dataset, method, str(len(rows))] + [mean_std([r[m] for r in rows]) for m in METRICS]
        if ordinal:
            cells.append(mean_std([r["qwk"] for r in rows]) if "qwk" in rows[0] else "")
        cells += [str(rows[0]["epochs"]), f"{rows[0]['image_passes']:,}",
                  f"{statistics.fmean(r['train_seconds'] for r in rows):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(out: Path, runs: list[dict]) -> None:
    rows = [flat_row(r) for r in runs]
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(Path(out) / "results.csv", buffer.getvalue())
    atomic_write_text(Path(out) / "results.md", results_table(runs))
