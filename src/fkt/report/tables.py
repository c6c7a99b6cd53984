"""Results as CSV (one row per run) and Markdown (mean ± std per dataset x axis values x arm, paired tests)."""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from pathlib import Path

from fkt.io import atomic_write_text
from fkt.report.axes import axes_of, axis_keys, axis_text, frozen, thawed
from fkt.report.paper import paper_figures
from fkt.report.stats import paired_difference

METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro")
# Measures beyond the test metrics, where the runs have them: (row key, column, paired-test heading).
EXTRA = (("knn_accuracy", "k-NN %", "k-NN accuracy of the frozen backbone"),
         ("corruption_accuracy", "corrupted %", "accuracy under common corruptions (mean of 35)"),
         ("ece", "ECE %", "expected calibration error (lower is better)"))
# Which arm is compared with which, in this order, where both are in the results.
COMPARISONS = (("functional", "representational"), ("functional", "supervised"),
               ("functional", "supervised-matched"), ("representational", "supervised-matched"),
               # with pseudo-labels: every arm against FixMatch, and the FixMatch arms against supervised-matched
               ("functional", "fixmatch"), ("representational", "fixmatch"), ("functional+fixmatch", "fixmatch"),
               ("representational+fixmatch", "fixmatch"), ("fixmatch", "supervised-matched"),
               ("functional+fixmatch", "supervised-matched"), ("representational+fixmatch", "supervised-matched"),
               ("functional+fixmatch", "functional"))
UNMATCHED = ("functional", "supervised")  # the arms the grid does not match to the functional cell's passes


def arm_of(run: dict) -> str:
    return run.get("arm") or run["method"]


def csv_value(value):
    """An axis value in results.csv: null as an empty cell, lists and dicts as JSON."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else axis_text(value)


def flat_row(run: dict) -> dict:
    row = {"dataset": run["dataset"], **{k: csv_value(v) for k, v in axes_of(run).items()}, "arm": arm_of(run),
           "method": run["method"], "seed": run["seed"], "backbone": run.get("backbone", ""),
           "val_accuracy": run["val"]["accuracy"]}
    if (run.get("pool") or {}).get("mismatch"):  # a class mismatch in the pool (Oliver et al.); none: no column
        row["pool_mismatch"] = run["pool"]["mismatch"]
    row.update({m: run["test"][m] for m in METRICS + ("qwk", "ece", "nll") if m in run["test"]})
    row.update({f"{k}_accuracy" if k == "knn" else f"{k}_probe_accuracy": v for k, v in run.get("probes", {}).items()})
    if "corruptions" in run:
        row["corruption_accuracy"] = run["corruptions"]["mean_accuracy"]
        row.update({f"corrupted_{name}": v for name, v in run["corruptions"]["per_corruption"].items()})
    row.update({k: run["compute"][k] for k in ("epochs", "image_passes", "train_seconds")})
    # forward+backward FLOPs of every training step, in all and per loss term (runs from before fkt counted them: none)
    row.update({"flops" if term == "total" else f"flops_{term}": v for term, v in run["compute"].get("flops", {}).items()})
    if "warnings" in run:  # SSL stages that did not learn (their lines are in results.md)
        row["warnings"] = len(run["warnings"])
    return row


def mean_std(values: list[float], scale: float = 100.0) -> str:
    mean = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {statistics.stdev(values) * scale:.2f}"


Group = tuple[str, tuple, str]  # (dataset, frozen axis values, arm)
WARNED = "\u26a0"  # beside an arm some of whose runs have an SSL stage that did not learn (metrics.json `warnings`)


def group_of(run: dict) -> Group:
    return run["dataset"], frozen(axes_of(run)), arm_of(run)


def warned_groups(runs: list[dict]) -> set[Group]:
    """The table rows holding at least one run whose SSL term did not learn."""
    return {group_of(run) for run in runs if run.get("warnings")}


def arm_cell(group: Group, warned: set[Group]) -> str:
    return f"{group[2]} {WARNED}" if group in warned else group[2]


def grouped(runs: list[dict]) -> dict[Group, list[dict]]:
    """Runs by (dataset, axis values, arm), in the grid's order: the seeds of one table row."""
    groups: dict[Group, list[dict]] = defaultdict(list)
    for run in runs:
        groups[group_of(run)].append(flat_row(run))
    return groups


def axis_cells(axes: tuple, keys: list[str]) -> list[str]:
    """One table cell per grid axis (none without axes, so such tables read as they always did)."""
    values = thawed(axes)
    return [axis_text(values[key]) if key in values else "" for key in keys]


def tflops(flops: float) -> str:
    """TFLOPs with two decimals (three significant digits below one: the test suite's tiny runs)."""
    value = flops / 1e12
    return f"{value:.2f}" if value >= 1 else f"{value:.3g}"


def results_table(runs: list[dict]) -> str:
    """One row per (dataset, axis values, arm): test metrics as mean ± std over seeds, compute, and the
    paper's figures."""
    groups, keys, warned = grouped(runs), axis_keys(runs), warned_groups(runs)
    ordinal = any("qwk" in r for rows in groups.values() for r in rows)
    paper = {key: paper_figures(key[0], key[2], rows[0]["backbone"], rows[0].get("data.labels_per_class"))
             for key, rows in groups.items()}
    # the pool's class mismatch, where a run has one and no axis shows it already
    mismatch = "data.pool_mismatch" not in keys and any("pool_mismatch" in r for rows in groups.values() for r in rows)
    head = ["dataset", *keys, *(["pool mismatch"] if mismatch else []), "arm", "n", "accuracy %", "precision %",
            "recall %", "F1 %"]
    head += ["QWK %"] if ordinal else []
    extra = [(key, column) for key, column, _ in EXTRA if any(key in r for rows in groups.values() for r in rows)]
    head += [column for _, column in extra]
    head += ["epochs", "image passes", "TFLOPs", "train s"]
    head += ["paper accuracy %"] if any(paper.values()) else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (dataset, axes, arm), rows in groups.items():
        cells = [dataset, *axis_cells(axes, keys), *([axis_text(rows[0].get("pool_mismatch", 0))] if mismatch else []),
                 arm_cell((dataset, axes, arm), warned), str(len(rows))]
        cells += [mean_std([r[m] for r in rows]) for m in METRICS]
        if ordinal:
            cells.append(mean_std([r["qwk"] for r in rows]) if "qwk" in rows[0] else "")
        cells += [mean_std([r[key] for r in rows]) if all(key in r for r in rows) else "" for key, _ in extra]
        cells += [str(rows[0]["epochs"]), f"{rows[0]['image_passes']:,}",
                  tflops(rows[0]["flops"]) if "flops" in rows[0] else "",
                  f"{statistics.fmean(r['train_seconds'] for r in rows):.0f}"]
        if any(paper.values()):
            figures = paper[(dataset, axes, arm)].get("accuracy")
            cells.append(figures if isinstance(figures, str) or not figures else f"{figures[0]:.2f} ± {figures[1]:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def corruption_table(runs: list[dict]) -> str:
    """Accuracy under each corruption (mean over its 5 severities) beside the clean accuracy."""
    groups = {key: rows for key, rows in grouped(runs).items() if all("corruption_accuracy" in r for r in rows)}
    if not groups:
        return ""
    keys, warned = axis_keys(runs), warned_groups(runs)
    names = [k[len("corrupted_"):] for k in next(iter(groups.values()))[0] if k.startswith("corrupted_")]
    head = ["dataset", *keys, "arm", "n", "clean %", "mean corrupted %"] + [f"{name} %" for name in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (dataset, axes, arm), rows in groups.items():
        cells = [dataset, *axis_cells(axes, keys), arm_cell((dataset, axes, arm), warned), str(len(rows)),
                 mean_std([r["accuracy"] for r in rows]),
                 mean_std([r["corruption_accuracy"] for r in rows])]
        cells += [mean_std([r[f"corrupted_{name}"] for r in rows]) for name in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_tests(runs: list[dict], metric: str = "accuracy") -> list[tuple[str, tuple, str, str, dict]]:
    """Each of COMPARISONS within one (dataset, axis values), seed s against seed s:
    (dataset, axes, arm a, arm b, paired_difference of a - b). Never across axis values."""
    groups = {key: {r["seed"]: r[metric] for r in rows if metric in r} for key, rows in grouped(runs).items()}
    groups = {key: by_seed for key, by_seed in groups.items() if by_seed}
    tests = []
    for dataset, axes in dict.fromkeys((d, x) for d, x, _ in groups):
        for a, b in COMPARISONS:
            if (dataset, axes, a) in groups and (dataset, axes, b) in groups:
                test = paired_difference(groups[(dataset, axes, a)], groups[(dataset, axes, b)])
                tests.append((dataset, axes, a, b, test))
    return tests


def verdict_cells(test: dict, a: str, b: str, metric: str) -> tuple[str, str, str]:
    """The 95% interval, p-value and verdict of one paired test, as table cells."""
    if test["p_value"] is None:
        return "", "", "too few seeds to test"
    ci = f"[{100 * test['ci_low']:+.2f}, {100 * test['ci_high']:+.2f}]"
    higher = a if test["mean_diff"] > 0 else b
    verdict = (f"{higher} {'worse' if metric == 'ece' else 'better'} (p < 0.05)" if test["significant"]
               else "not significant: no difference shown")
    return ci, f"{test['p_value']:.3g}", verdict


def significance_table(runs: list[dict], metric: str = "accuracy") -> str:
    """Paired differences of `metric` per dataset and axis values (seed s against seed s), in points."""
    keys = axis_keys(runs)
    head = ["dataset", *keys, "comparison", "pairs", "mean difference (points)", "95% CI", "p (paired t)", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for dataset, axes, a, b, test in paired_tests(runs, metric):
        ci, p, verdict = verdict_cells(test, a, b, metric)
        cells = [dataset, *axis_cells(axes, keys), f"{a} - {b}", str(test["n"]), f"{100 * test['mean_diff']:+.2f}",
                 ci, p, verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def shared_pretraining_note(runs: list[dict]) -> str:
    """Which cells reused another cell's SSL stage (`fkt reproduce` pretrains once where the stage
    cannot differ); their rows still count that stage's passes and seconds, as if each had run it."""
    shared = [run for run in runs if run.get("shared_pretraining")]
    if not shared:
        return ""
    lines = ["", "SSL pretraining was shared: each row counts the full cost of its pretraining stage, "
             "but these runs loaded it from another run instead of training it again:", ""]
    for run in shared:
        lines.append(f"- {run_label(run)}: the SSL stage of `{run['shared_pretraining']}`")
    return "\n".join(lines) + "\n"


def copies_note(runs: list[dict]) -> str:
    """Which supervised cells are copies of an identical earlier cell (an axis it does not read)."""
    copies = [run for run in runs if run.get("copy_of")]
    if not copies:
        return ""
    lines = ["", "Some supervised cells train exactly what an earlier cell trained (the grid's axis is a field "
             "supervised training does not read), so they are copies of it, with the same figures:", ""]
    lines += [f"- {run_label(run)}: a copy of `{run['copy_of']}`" for run in copies]
    return "\n".join(lines) + "\n"


MATCH_TOLERANCE = 0.05  # a matched stage ends at the nearest step: a few per cent apart is that rounding, not a mismatch


def unmatched_note(runs: list[dict]) -> str:
    """Matched cells (every arm but UNMATCHED's) whose image passes are more than MATCH_TOLERANCE
    from the functional cell's of the same dataset, axis values and seed. The grid plans the matched arms from the configured batches; a run that had to cap
    a batch to its data (a note in its data_notes) trains other batches, so its arms can drift apart."""
    functional = {(r["dataset"], frozen(axes_of(r)), r["seed"]): r["compute"]["image_passes"]
                  for r in runs if arm_of(r) == "functional"}
    drifted = []
    for run in runs:
        base = functional.get((run["dataset"], frozen(axes_of(run)), run["seed"]))
        mine = run["compute"]["image_passes"]
        if arm_of(run) not in UNMATCHED and base and abs(mine - base) > MATCH_TOLERANCE * base:
            drifted.append(f"- {run_label(run)}: {mine:,} image passes against the functional cell's {base:,}")
    if not drifted:
        return ""
    return "\n".join(["", "Not compute-matched (more than 5% apart from the functional cell; see each run's "
                       "data_notes for a batch capped to the data):", "", *drifted]) + "\n"


def run_label(run: dict) -> str:
    axes = ", ".join(f"{k}={axis_text(v)}" for k, v in axes_of(run).items())
    return ", ".join(part for part in (run["dataset"], axes, arm_of(run), f"seed {run['seed']}") if part)


def warnings_note(runs: list[dict]) -> str:
    """The footnote to the rows marked with WARNED: each run's warnings, as metrics.json has them."""
    warned = [run for run in runs if run.get("warnings")]
    if not warned:
        return ""
    lines = ["", f"{WARNED} An SSL stage did not learn in these runs (its loss stayed near its start or its chance "
             "value), so the arm's figures are not those of a trained SSL part:", ""]
    lines += [f"- {run_label(run)}: {warning}" for run in warned for warning in run["warnings"]]
    return "\n".join(lines) + "\n"


def write_results(out: Path, runs: list[dict], extra: str = "") -> str:
    """results.csv and results.md under `out` (`extra`, a section of the caller's, at its end); returns
    the Markdown."""
    rows = [flat_row(r) for r in runs]
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(Path(out) / "results.csv", buffer.getvalue())
    markdown = "## Test metrics (mean ± std over seeds)\n\n" + results_table(runs) + warnings_note(runs)
    markdown += shared_pretraining_note(runs) + copies_note(runs) + unmatched_note(runs)
    corrupted = corruption_table(runs)
    if corrupted:
        markdown += "\n## Accuracy under common corruptions (mean over 5 severities)\n\n" + corrupted
    for metric, heading in (("accuracy", "test accuracy"), *((key, title) for key, _, title in EXTRA)):
        significance = significance_table(runs, metric)
        if significance:
            markdown += f"\n## Paired differences in {heading}\n\n" + significance
    markdown += extra
    atomic_write_text(Path(out) / "results.md", markdown)
    return markdown
