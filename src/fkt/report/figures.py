"""Figures from run directories: accuracy against a grid axis, learning curves against compute,
confusion matrices."""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from scipy import stats

from fkt.io import atomic_write
from fkt.report.axes import LABEL_AXES, axes_label, axes_of, axis_keys, axis_text, path_safe, short_names
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


PSEUDO = (("pseudo/mask_rate_step", "mask rate %", "pool images above the threshold"),
          ("pseudo/accuracy_step", "pseudo-label accuracy %", "confident pseudo-labels against the withheld labels"))


def pseudo_label_curves(runs: list[dict], run_dirs: list[Path], path: Path, title: str) -> bool:
    """The pseudo-label term's mask rate and its labels' accuracy against image passes, one line per run
    and one colour per arm (logged every trainer.log_every_n_steps); False where no run has the term."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours: dict[str, str] = {}
    for run, run_dir in zip(runs, run_dirs):
        stage = "finetune" if run["method"] == "representational" else "train"
        log = Path(run_dir) / "logs" / stage / "metrics.csv"
        rows = [r for r in read_rows(log) if r.get(PSEUDO[0][0])] if log.exists() else []
        if not rows:
            continue
        arm = arm_of(run)
        label = None if arm in colours else arm
        colour = colours.setdefault(arm, f"C{len(colours)}")
        for ax, (column, *_) in zip(axes, PSEUDO):
            points = [(float(r["compute/image_passes"]), 100 * float(r[column])) for r in rows
                      if r.get(column) and r.get("compute/image_passes")]
            if points:
                ax.plot(*zip(*points), color=colour, label=label, alpha=0.6)
    if not colours:
        plt.close(fig)
        return False
    for ax, (_, ylabel, what) in zip(axes, PSEUDO):
        ax.set_xlabel("image passes through the backbone (training)")
        ax.set_ylabel(ylabel)
        ax.set_title(what, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    save(fig, path)
    return True


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
    """Per dataset: accuracy against each numeric grid axis, learning curves of every run, the pseudo-label
    curves where some run has the term; per arm: the confusion matrix of its lowest seed (at the first axis
    values)."""
    out = Path(out) / "figures"
    written = axis_figures(out, runs)
    by_dataset: dict[str, list[int]] = defaultdict(list)
    for i, run in enumerate(runs):
        by_dataset[run["dataset"]].append(i)
    for dataset, idx in by_dataset.items():
        path = out / f"{dataset}-learning-curves.png"
        learning_curves([runs[i] for i in idx], [run_dirs[i] for i in idx], path, dataset)
        written.append(path)
        path = out / f"{dataset}-pseudo-labels.png"
        if pseudo_label_curves([runs[i] for i in idx], [run_dirs[i] for i in idx], path, f"{dataset}: pseudo-labels"):
            written.append(path)
        seen = set()
        for i in sorted(idx, key=lambda i: runs[i]["seed"]):
            arm = arm_of(runs[i])
            if arm in seen or "confusion_matrix" not in runs[i]["test"]:
                continue
            seen.add(arm)
            path = out / f"{dataset}-{arm}-confusion.png"
            where = ", ".join(filter(None, (dataset, axes_label(axes_of(runs[i])), arm, f"seed {runs[i]['seed']}")))
            confusion_matrix(runs[i]["test"]["confusion_matrix"], runs[i]["classes"], path, where)
            written.append(path)
    return written


def numeric_axis(runs: list[dict], key: str) -> bool:
    """An axis worth a line plot: every value a number or null (null: no limit, every image)."""
    values = [axes_of(run).get(key) for run in runs]
    numbers = [v for v in values if v is not None]
    return bool(numbers) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers)


def axis_x(run: dict, key: str) -> float | None:
    """Where a run stands on the axis: for a label budget its number of labelled images where the run
    recorded them, else the axis value; None for a null whose image count is unknown."""
    if key in LABEL_AXES and "labelled" in run.get("images", {}):
        return float(run["images"]["labelled"])
    value = axes_of(run)[key]
    return None if value is None else float(value)


# Below this many seeds a t-interval says little (2 seeds: t = 12.7, bars far past 0 and 100%): the
# figure draws the seeds' min-max range instead, and says so in the legend.
MIN_SEEDS_FOR_INTERVAL = 3


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% t-interval (0 with one value: nothing to estimate a spread from)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))


def spread(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of one point's bar: the 95% t-interval, or the min-max range below
    MIN_SEEDS_FOR_INTERVAL values."""
    mean, half = t_interval(values)
    if len(values) < MIN_SEEDS_FOR_INTERVAL:
        return mean, min(values), max(values)
    return mean, mean - half, mean + half


def axis_lines(runs: list[dict], key: str) -> dict[str, dict[str, list[dict]]]:
    """Line name (the arm, and other axes' values) -> axis value (as text) -> its runs (the seeds)."""
    lines: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        others = {k: v for k, v in axes_of(run).items() if k != key}
        name = arm_of(run) + (f" ({axes_label(others)})" if others else "")
        lines[name][axis_text(axes_of(run)[key])].append(run)
    return lines


def accuracy_vs_axis(runs: list[dict], key: str, path: Path, title: str) -> None:
    """Test accuracy against one axis, a line per arm: mean and 95% t-interval over seeds (the min-max
    range below MIN_SEEDS_FOR_INTERVAL, said in the legend), the y axis within [0, 100]. A label budget
    is drawn against labelled images on a log scale; a null with no image count stands right of the rest."""
    log = key in LABEL_AXES
    known = [x for x in (axis_x(run, key) for run in runs) if x is not None]
    top, bottom = max(known, default=1.0), min(known, default=1.0)
    beyond = top * 2 if log else top + 0.25 * ((top - bottom) or 1.0)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ticks: dict[float, str] = {}
    extent: list[float] = []
    few_seeds = False
    for i, (name, points) in enumerate(axis_lines(runs, key).items()):
        drawn, seeds = [], set()
        for text, members in points.items():
            xs = [x for x in (axis_x(run, key) for run in members) if x is not None]
            x = statistics.fmean(xs) if xs else beyond
            ticks[x] = ("all" + (f"\n({x:,.0f})" if xs else "")) if text == "all" else (
                f"{x:,.0f}" if log and xs else text)
            drawn.append((x, *spread([run["test"]["accuracy"] * 100 for run in members])))
            seeds.add(len(members))
        drawn.sort()
        extent += [v for _, _, low, high in drawn for v in (low, high)]
        below = sorted(n for n in seeds if n < MIN_SEEDS_FOR_INTERVAL)
        few_seeds = few_seeds or bool(below)
        if below:  # say what the bars are where they are not intervals
            name += (" (1 seed: no bars)" if seeds == {1} else f" (bars: min-max of {below[0]} seeds)"
                     if len(seeds) == 1 else f" (bars: min-max where under {MIN_SEEDS_FOR_INTERVAL} seeds)")
        ax.errorbar([d[0] for d in drawn], [d[1] for d in drawn],
                    yerr=[[d[1] - d[2] for d in drawn], [d[3] - d[1] for d in drawn]], marker="o",
                    capsize=3, color=f"C{i}", label=name)
    finish_axis_plot(ax, ticks, log, "labelled training images" if log else key, title, few_seeds)
    clip_accuracy_axis(ax, extent)
    save(fig, path)


def clip_accuracy_axis(ax: plt.Axes, extent: list[float]) -> None:
    """Y limits around the drawn bars, never beyond [0, 100] (an interval may reach past them: accuracy cannot)."""
    low, high = min(extent, default=0.0), max(extent, default=100.0)
    pad = max(1.0, 0.05 * (high - low))
    ax.set_ylim(max(0.0, low - pad), min(100.0, high + pad))


def finish_axis_plot(ax: plt.Axes, ticks: dict[float, str], log: bool, xlabel: str, title: str,
                     few_seeds: bool = False) -> None:
    """Ticks at the grid's values only (log scale for label budgets), labels, legend."""
    if log:
        ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(sorted(ticks), [ticks[x] for x in sorted(ticks)])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy % (mean, 95% t-interval over seeds" + (
        f"; min-max under {MIN_SEEDS_FOR_INTERVAL})" if few_seeds else ")"))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()


DRAWS = ("data.split_seed", "evaluate.corruption_seed")  # numbers that name a random draw, not a quantity to plot against


def axis_figures(folder: Path, runs: list[dict]) -> list[Path]:
    """Per dataset and numeric axis: `<dataset>-accuracy-vs-<axis>.png`."""
    written = []
    for dataset in dict.fromkeys(run["dataset"] for run in runs):
        mine = [run for run in runs if run["dataset"] == dataset and axes_of(run)]
        names = short_names(axis_keys(mine))
        for key in names:
            if numeric_axis(mine, key) and key not in DRAWS:
                path = Path(folder) / f"{dataset}-accuracy-vs-{path_safe(names[key])}.png"
                accuracy_vs_axis([run for run in mine if key in axes_of(run)], key, path,
                                 f"{dataset}: test accuracy against {key}")
                written.append(path)
    return written
