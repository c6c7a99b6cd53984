"""The few-labels-ssl study pooled over its labelled draws: per budget, each arm's accuracy, mask
rate and pseudo-label accuracy at the end, the paired verdicts of every arm against fixmatch and
against supervised-matched (pairs: the same split seed and training seed), and the accuracy
against budget figure. `fkt reproduce` reports each draw apart; this pools them.

    python scripts/few_labels_ssl_summary.py runs/few-labels-ssl docs/figures/few-labels-ssl-accuracy.png
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from fkt.report.figures import plt, save, t_interval
from fkt.report.stats import paired_difference

ARMS = ("supervised-matched", "fixmatch", "representational", "functional", "functional+fixmatch")
REFERENCES = ("fixmatch", "supervised-matched")


def load(grid: Path) -> list[dict]:
    runs = []
    for path in sorted(grid.glob("runs/*/metrics.json")):
        run = json.loads(path.read_text())
        run["dir"] = path.parent
        runs.append(run)
    return runs


def last_logged(run: dict, column: str) -> float | None:
    """The column's last value in the final stage's training log (the mask rate at the end, say)."""
    stage = "finetune" if run["method"] == "representational" else "train"
    with open(run["dir"] / "logs" / stage / "metrics.csv", newline="") as handle:
        values = [float(row[column]) for row in csv.DictReader(handle) if row.get(column)]
    return values[-1] if values else None


def table(runs: list[dict]) -> str:
    by = defaultdict(list)
    for run in runs:
        by[(run["axes"]["trainer.epochs"], run["arm"])].append(run)
    lines = ["| pool epochs | arm | runs | test accuracy % | k-NN % | ECE % | image passes | mask rate at the end % "
             "| pseudo-label accuracy at the end % |", "|---|---|---|---|---|---|---|---|---|"]
    for epochs in sorted({k[0] for k in by}):
        for arm in ARMS:
            rows = by.get((epochs, arm))
            if not rows:
                continue

            def cell(values: list[float | None]) -> str:
                values = [100 * v for v in values if v is not None]
                if not values:
                    return ""
                return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 \
                    else f"{values[0]:.2f}"

            passes = sorted({r["compute"]["image_passes"] for r in rows})
            lines.append(f"| {epochs} | {arm} | {len(rows)} | {cell([r['test']['accuracy'] for r in rows])} | "
                         f"{cell([r['probes']['knn'] for r in rows])} | {cell([r['test']['ece'] for r in rows])} | "
                         f"{', '.join(f'{p:,}' for p in passes)} | "
                         f"{cell([last_logged(r, 'pseudo/mask_rate_epoch') for r in rows])} | "
                         f"{cell([last_logged(r, 'pseudo/accuracy_epoch') for r in rows])} |")
    return "\n".join(lines)


def verdicts(runs: list[dict]) -> str:
    acc = defaultdict(dict)
    for run in runs:
        acc[(run["axes"]["trainer.epochs"], run["arm"])][(run["axes"]["data.split_seed"], run["seed"])] = \
            run["test"]["accuracy"]
    lines = []
    for epochs in sorted({k[0] for k in acc}):
        for reference in REFERENCES:
            for arm in ARMS:
                if arm == reference or (epochs, arm) not in acc or (epochs, reference) not in acc:
                    continue
                test = paired_difference(acc[(epochs, arm)], acc[(epochs, reference)])
                draws = sorted({s for s, _ in test["seeds"]})
                interval = (f"[{100 * test['ci_low']:+.2f}, {100 * test['ci_high']:+.2f}], p = {test['p_value']:.3g}"
                            if test["p_value"] is not None else "no interval")
                mark = " **(significant)**" if test["significant"] else ""
                lines.append(f"- {epochs} pool epochs, {arm} − {reference}: {100 * test['mean_diff']:+.2f} "
                             f"{interval}, {test['n']} pairs over split seeds {draws}{mark}")
    return "\n".join(lines)


def figure(runs: list[dict], path: Path) -> None:
    by = defaultdict(list)
    for run in runs:
        by[run["arm"]].append(run)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, arm in enumerate(a for a in ARMS if a in by):
        points = defaultdict(list)
        for run in by[arm]:
            points[run["axes"]["trainer.epochs"]].append(100 * run["test"]["accuracy"])
        xs = sorted(points)
        means, halves = zip(*(t_interval(points[x]) for x in xs))
        shift = [x * (1 + 0.02 * (i - 2)) for x in xs]  # side by side, so the bars do not hide each other
        ax.errorbar(shift, means, yerr=halves, marker="o", capsize=3, label=arm, color=f"C{i}")
    ax.set_xscale("log")
    ax.set_xticks(sorted({x for run in runs for x in [run["axes"]["trainer.epochs"]]}))
    ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.FuncFormatter(
        lambda x, _: f"{x:g} ({x * 9920:,.0f} passes)"))
    ax.xaxis.set_minor_formatter(plt.matplotlib.ticker.NullFormatter())
    ax.set_xlabel("pool epochs of the functional arm (image passes of every arm)")
    ax.set_ylabel("test accuracy % (mean, 95% interval)")
    ax.set_title("Fashion-MNIST, 10 labels a class: accuracy against budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)


def main() -> None:
    grid, figure_path = Path(sys.argv[1]), Path(sys.argv[2])
    runs = load(grid)
    print(table(runs), "\n")
    print(verdicts(runs))
    figure(runs, figure_path)


if __name__ == "__main__":
    main()
