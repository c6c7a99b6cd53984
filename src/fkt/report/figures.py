"""Figures from run directories: learning curves against compute, confusion matrices."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fkt.io import atomic_write
from fkt.report.tables import arm_of


def validation_curve(run_dir: Path, final_stage: str) -> list[tuple[float, float]]:
    """(image passes so far, val accuracy) after each validated epoch, earlier stages' passes included."""
    run_dir = Path(run_dir)
    stages = json.loads((run_dir / "metrics.json").read_text())["compute"]["stages"]
    offset = sum(s["image_passes"] for name, s in stages.items() if name != final_stage)
    rows = read_rows(run_dir / "logs" / final_stage / "metrics.csv")
    # keyed by passes: an epoch validated again after a resume appears once, its later row kept
    curve = {offset + float(r["val/image_passes"]): float(r["val/acc"])
             for r in rows if r.get("val/acc") and r.get("val/image_passes")}
    return sorted(curve.items())


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def save(fig: plt.Figure, path: Path) -> None:
    atomic_write(Path(path), lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"), mode="wb")
    plt.close(fig)


def learning_curves(runs: list[dict], run_dirs: list[Path], path: Path, title: str) -> None:
    """Validation accuracy against image passes, one line per run, one colour per arm."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colours = {}
    for run, run_dir in zip(runs, run_dirs):
        arm = arm_of(run)
        stage = "finetune" if run["method"] == "representational" else "train"
        points = validation_curve(run_dir, stage)
        if not points:
            continue
        label = None if arm in colours else arm  # one legend entry per arm
        colour = colours.setdefault(arm, f"C{len(colours)}")
        ax.plot([p for p, _ in points], [100 * a for _, a in points], marker="o", color=colour, label=label, alpha=0.8)
    ax.set_xlabel("image passes through the backbone (training)")
    ax.set_ylabel("validation accuracy %")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, path)


def confusion_matrix(matrix: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(classes), 0.8 + 0.5 * len(classes)))
    ax.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    save(fig, path)


def grid_figures(out: Path, runs: list[dict], run_dirs: list[Path]) -> list[Path]:
    """Per dataset: learning curves of every run; per arm: the confusion matrix of its lowest seed."""
    out = Path(out) / "figures"
    written = []
    by_dataset: dict[str, list[int]] = defaultdict(list)
    for i, run in enumerate(runs):
        by_dataset[run["dataset"]].append(i)
    for dataset, idx in by_dataset.items():
        path = out / f"{dataset}-learning-curves.png"
        learning_curves([runs[i] for i in idx], [run_dirs[i] for i in idx], path, dataset)
        written.append(path)
        seen = set()
        for i in sorted(idx, key=lambda i: runs[i]["seed"]):
            arm = arm_of(runs[i])
            if arm in seen or "confusion_matrix" not in runs[i]["test"]:
                continue
            seen.add(arm)
            path = out / f"{dataset}-{arm}-confusion.png"
            confusion_matrix(runs[i]["test"]["confusion_matrix"], runs[i]["classes"], path,
                             f"{dataset}, {arm}, seed {runs[i]['seed']}")
            written.append(path)
    return written
