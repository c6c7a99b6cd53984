"""The report's tuning section, where a grid was tuned (grid.tune, fkt.tune): the settings each arm was chosen
to train with, and what choosing them cost, apart from the final runs' compute; Optuna's figures beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from fkt.io import atomic_write
from fkt.report.axes import axes_label
from fkt.tune import CHOSEN, shown

HEADER = ("| arm | dataset / axes | chosen | best val acc % | trials | pruned | image passes | seconds |\n"
          "|---|---|---|---:|---:|---:|---:|---:|")


def tuning_markdown(out: Path, grids: Iterable[Path] = ()) -> str:
    """A Markdown section from the studies under `out`/tuning/ and each of `grids`/tuning/ (a report of several
    grids' folders); "" where none was tuned. Copies each study's figures into `out`/figures/ as
    tuning-<key>-<figure>.png, where the report page shows them."""
    out = Path(out)
    found = {path.resolve(): path for grid in [out, *map(Path, grids)]
             for path in sorted((grid / "tuning").glob(f"*/{CHOSEN}"))}
    if not found:
        return ""
    rows, figures, passes, seconds = [], [], 0, 0.0
    for path in found.values():
        record = json.loads(path.read_text())
        rows.append(row(record))
        figures += copy_figures(record, path.parent, out / "figures")
        passes, seconds = passes + record["compute"]["image_passes"], seconds + record["compute"]["train_seconds"]
    return "\n".join([
        "", "## Tuning (the same trials for every arm, chosen on the validation split)", "",
        "Each arm trained the seeds above with the settings its study chose (Optuna, TPE sampler; the test split "
        "never read). The tuning's own compute is not in the final runs' columns above: "
        f"{passes:,} image passes and {seconds:.0f} s in all.", "",
        HEADER, *rows, "",
        *([f"Optuna's figures: {', '.join(f'`figures/{name}`' for name in figures)}.", ""] if figures else [])])


def row(record: dict[str, Any]) -> str:
    where = record["dataset"] + (f" / {axes_label(record['axes'])}" if record["axes"] else "")
    trials, compute = record["trials"], record["compute"]
    return (f"| {record['arm']} | {where} | {shown(record['params'])} | {100 * record['best_val_accuracy']:.2f} | "
            f"{trials['completed'] + trials['pruned']} | {trials['pruned']} | {compute['image_passes']:,} | "
            f"{compute['train_seconds']:.0f} |")


def copy_figures(record: dict[str, Any], folder: Path, target: Path) -> list[str]:
    """The study's PNGs under `target`, named by its tuning key; their new names."""
    names = []
    for figure in record.get("figures", []):
        source = folder / figure
        if source.is_file():
            name = f"tuning-{record['key']}-{Path(figure).name}"
            data = source.read_bytes()
            atomic_write(target / name, lambda f: f.write(data), mode="wb")
            names.append(name)
    return names
