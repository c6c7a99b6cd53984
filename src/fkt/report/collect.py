"""`fkt report DIR [DIR ...] --out REPORT`: one report from the finished runs of one or more grids' folders
(seeds 0-2 trained in one, 3-5 in another, or a grid's cells trained on several machines), written only
once the runs that are meant to pair are shown to pair.

Each run is read back as `fkt reproduce` reads a finished cell (`fkt.reproduce.annotated`: its axis values,
the cell it is a copy of, the cell whose SSL stage it reused), so the report is the one the grid writes.
Heavy modules (the grid, the tables) are imported where they are used: the CLI imports this module to
build its parser on every `fkt` command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

from fkt.config import Config
from fkt.errors import UserError
from fkt.report.axes import axes_of, frozen
from fkt.rundir import RunDir

# Fields in which runs meant to pair may differ without training anything else: the seed (what pairs
# them), where the run, its data and its image cache live (folders differ between machines), the grid
# that made it (a grid of seeds 0-2 and one of 3-5 differ in grid.seeds), and the hardware and
# bookkeeping (data loader processes, the cache, devices, the progress bar, how often to checkpoint and
# log). Every other field changes what is trained or measured, and a difference in it is refused.
PAIRING_IGNORED_FIELDS = ("seed", "out", "grid", "data.root", "data.unlabelled_root", "data.cache_dir",
                          "data.num_workers", "data.cache", "trainer.accelerator", "trainer.devices",
                          "trainer.num_nodes", "trainer.strategy", "trainer.progress_bar",
                          "trainer.checkpoint_every_n_steps", "trainer.checkpoint_every_minutes",
                          "trainer.log_every_n_steps")


class Found(NamedTuple):
    """A finished run: its result as the grid annotates it, its folder, its config."""

    run: dict
    folder: Path
    config: Config


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`fkt report`'s own flags."""
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR",
                   help="a grid's --out folder (holding runs/) or one run's folder (holding metrics.json); "
                        "the finished runs of every DIR go into one report")
    p.add_argument("--out", type=Path, required=True,
                   help="the report's folder (results.csv, results.md, report.html, figures/); may be one of the DIRs")


def report_command(args: argparse.Namespace) -> int:
    """Read and check every run first, then write the grid's report and print its Markdown."""
    from fkt.report.grid import write_grid_report

    found = collect(args.dirs)
    print(write_grid_report(args.out, [f.run for f in found], [f.folder for f in found]))
    return 0


def collect(dirs: list[Path]) -> list[Found]:
    """Every finished run under `dirs` in the grids' order, once no two are the same cell and the runs
    of each (dataset, axis values, arm) pair; unfinished runs are named on stderr and left out."""
    found: dict[Path, Found] = {}  # by resolved folder: a DIR given twice, or inside another, counts once
    unfinished: list[Path] = []
    for folder in dirs:
        finished, waiting = run_folders(Path(folder))
        unfinished += waiting
        for run_dir in finished:
            if run_dir.resolve() not in found:
                found[run_dir.resolve()] = read_run(run_dir)
    runs = list(found.values())
    check_cells(runs)
    check_pairs(runs)
    if unfinished:
        print(f"[fkt] skipped {len(unfinished)} unfinished run(s) (no metrics.json): "
              f"{', '.join(map(str, unfinished))}", file=sys.stderr)
    return in_grid_order(runs)


def run_folders(folder: Path) -> tuple[list[Path], list[Path]]:
    """(finished, unfinished) run folders of `folder`: itself where it holds metrics.json, else its runs/*/."""
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    if RunDir(folder).metrics.is_file():
        return [folder], []
    runs = sorted(p for p in (folder / "runs").glob("*") if p.is_dir())
    from fkt.reproduce import PARTIAL_COPY

    finished = [p for p in runs if RunDir(p).metrics.is_file() and not p.name.endswith(PARTIAL_COPY)]
    if not finished:
        raise UserError(f"{folder}: no finished runs (no runs/*/metrics.json)")
    return finished, [p for p in runs if p not in finished]


def read_run(folder: Path) -> Found:
    """A run as the grid reads a finished cell: its axis values from metrics.json, its config from its
    config.yaml with `out` set to where the folder is now (a copied folder's config names where it was
    trained, and the grid's markers are looked for under `out`)."""
    from fkt.reproduce import Cell, annotated

    path = RunDir(folder).metrics
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read ({err})") from None
    config = Config.from_yaml(RunDir(folder).config, {"out": str(folder)})
    return Found(annotated(metrics, Cell(config, axes_of(metrics))), folder, config)


def check_cells(found: list[Found]) -> None:
    """Each cell (dataset, axis values, arm, seed) once: the same seed trained twice would count twice."""
    from fkt.report.tables import group_of, run_label

    first: dict[tuple, Found] = {}
    for f in found:
        other = first.setdefault((*group_of(f.run), f.run["seed"]), f)
        if other is not f:
            raise UserError(f"the same cell ({run_label(f.run)}) is in {other.folder} and in "
                            f"{f.folder}; report each seed once")


def check_pairs(found: list[Found]) -> None:
    """The runs of each (dataset, axis values, arm) train the same thing but for their seed: paired
    differences between arms mean nothing otherwise."""
    from fkt.report.tables import group_of

    first: dict[tuple, Found] = {}
    for f in found:
        other = first.setdefault(group_of(f.run), f)
        difference = config_difference(other, f)
        if difference:
            field, mine, theirs = difference
            raise UserError(f"{field} differs between runs meant to pair: {json.dumps(mine)} in "
                            f"{other.folder}, {json.dumps(theirs)} in {f.folder}")


def config_difference(a: Found, b: Found) -> tuple[str, Any, Any] | None:
    """The first field outside PAIRING_IGNORED_FIELDS in which two runs' configs differ (None: none does).
    A copied cell's config.yaml is its source cell's, which may differ from the cell's own in what
    supervised training never reads (SUPERVISED_IGNORED_FIELDS): beside a copy, those are ignored too."""
    from fkt.reproduce import SUPERVISED_IGNORED_FIELDS, signature

    copy = "copy_of" in a.run or "copy_of" in b.run
    ignored = PAIRING_IGNORED_FIELDS + (SUPERVISED_IGNORED_FIELDS if copy else ())
    left, right = (flat(json.loads(signature(f.config, ignored))) for f in (a, b))
    for field in dict.fromkeys([*left, *right]):
        if left.get(field) != right.get(field) or (field in left) != (field in right):
            return field, left.get(field), right.get(field)
    return None


def flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"ssl": {"lr": 0.1}}} -> {"optim.ssl.lr": 0.1}: a difference named as the field's dotted path."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def in_grid_order(found: list[Found]) -> list[Found]:
    """The runs in the order `fkt reproduce` plans its cells (datasets, axis values, arms, seeds), each
    dimension as the runs' grids list it (the first DIR's grid first; values no grid lists come last):
    the tables' rows follow it, so the merged report reads as the grid's own."""
    from fkt.report.tables import arm_of
    from fkt.reproduce import axis_points

    datasets = ranks([d for f in found for d in f.config.grid.datasets or [f.config.data.dataset]]
                     + [f.run["dataset"] for f in found])
    points = ranks([frozen(p) for f in found for p in axis_points(f.config)] + [frozen(axes_of(f.run)) for f in found])
    arms = ranks([a for f in found for a in f.config.grid.methods] + [arm_of(f.run) for f in found])
    return sorted(found, key=lambda f: (datasets[f.run["dataset"]], points[frozen(axes_of(f.run))],
                                        arms[arm_of(f.run)], f.run["seed"]))


def ranks(values: list) -> dict[Any, int]:
    """Each value's place at its first appearance."""
    return {value: place for place, value in enumerate(dict.fromkeys(values))}
