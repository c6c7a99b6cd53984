"""A preset's grid of (dataset, axis values, arm, seed) cells, each its own run directory, then the tables.

A cell whose metrics.json exists is not run again, and a cell that was interrupted
resumes from its last checkpoint, so rerunning the same command finishes the grid.
Representational cells whose SSL stage cannot differ pretrain once (see SSL_IGNORED_FIELDS), and a
supervised cell that would train exactly what an earlier one trained (an axis over the SSL objective or
the fusion does not touch it) is a copy of that cell (see SUPERVISED_IGNORED_FIELDS).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

from fkt.compute import passes_per_step
from fkt.config import Config, build_config, deep_merge, set_dotted
from fkt.engine import check_method, train
from fkt.errors import UserError
from fkt.io import RunLock, atomic_write_json, is_rank_zero
from fkt.launch import Launcher, Sequential
from fkt.report.axes import axes_label, path_safe
from fkt.report.grid import write_grid_report
from fkt.rundir import PRETRAIN, RunDir
from fkt.tune import chosen_settings, tune_grid, tuning_plan

# Fields that cannot change what a representational cell's SSL stage learns, so cells of one grid
# that differ only in them share one pretraining: the label budget and the labelled batch (the SSL
# stage reads every training image and no label; with another budget it sees the same images in
# another order), what only fine-tuning or the functional arm reads (epochs, finetune mode, classifier
# input, cross-entropy weight and its fusion, their optimizers), what is measured after training (evaluate), and the
# cell's bookkeeping (arm, out, grid). tests/test_grid_fields.py checks both lists against the fields each
# stage reads, so a new field cannot be forgotten here.
SSL_IGNORED_FIELDS = ("data.labels_per_class", "data.labelled_fraction", "data.labelled_batch_size",
                      "data.pool_batch_ratio", "data.val_labels_per_class", "method.pseudo_label",
                      "method.pl_threshold", "method.pl_weight", "method.ema_decay",
                      "trainer.epochs", "method.finetune", "method.lambda_ce", "method.classifier_input",
                      "method.fusion", "method.lambda_start", "method.ramp_epochs", "method.grad_cosine",
                      "optim.supervised", "optim.functional", "evaluate", "arm", "out", "grid", "tune")
# Fields supervised training never reads: cells that differ only in them train the same network.
SUPERVISED_IGNORED_FIELDS = ("method.ssl", "method.fusion", "method.lambda_ce", "method.lambda_start",
                             "method.ramp_epochs", "method.temperature", "method.grad_cosine", "optim.ssl",
                             "optim.functional", "model.proj_hidden_dim", "model.proj_output_dim",
                             "trainer.pretrain_epochs", "out", "grid", "tune")
SHARED_MARKER = "shared_pretraining.json"  # in a run directory whose SSL stage came from another cell
COPY_MARKER = "copy_of.json"  # in a run directory copied from an identical earlier cell
PARTIAL_COPY = ".copying"  # the suffix of a copied cell's folder while copy_run makes it: never finished


class Cell(NamedTuple):
    """One cell: its config and its axis values, which the config cannot give back (supervised-matched's
    epochs are derived from the functional cell's, not the axis value)."""

    config: Config
    axes: dict[str, Any]


def run_name(dataset: str, axes: dict[str, Any], arm: str, seed: int) -> str:
    """`fashion-mnist-labels_per_class=10-functional-seed0`; without axes the name grids always had."""
    parts = [dataset, path_safe(axes_label(axes, "-")) if axes else "", arm, f"seed{seed}"]
    return "-".join(part for part in parts if part)


def arm_method(arm: str) -> dict[str, str]:
    """The method settings an arm names: `supervised-matched` is plain supervised training, `fixmatch`
    supervised training with the pseudo-label term, `<method>+fixmatch` that method with it."""
    if arm == "supervised-matched":
        return {"name": "supervised", "pseudo_label": "none"}
    method, _, pseudo = arm.partition("+")
    if method == "fixmatch":
        method, pseudo = "supervised", "fixmatch"
    return {"name": method, **({"pseudo_label": pseudo} if pseudo else {})}


def tuning_key(dataset: str, axes: dict[str, Any], arm: str) -> str:
    """The name of what one tuning study chose settings for: a grid's cells of one arm at one dataset
    and axis values (all their seeds)."""
    return run_name(dataset, axes, arm, 0).removesuffix("-seed0")


def cell_config(config: Config, dataset: str, arm: str, seed: int, out: Path,
                axes: dict[str, Any] | None = None, chosen: dict[str, dict[str, Any]] | None = None) -> Config:
    """The config of one cell: the preset, its dataset's and its arm's overrides, then its axis values
    (what the grid varies has the last word) and the settings tuning chose for it (`chosen`, by
    `tuning_key`; fkt.tune), except the epochs of the arms matched to the functional cell with the same
    axis values (supervised-matched; with few labels every arm): those that give it that cell's image
    passes, so compute matches per axis value."""
    axes = axes or {}
    data = deep_merge(config.to_dict(), {"data": {"dataset": dataset}})
    data = deep_merge(data, config.grid.per_dataset.get(dataset, {}))
    data = deep_merge(data, config.grid.per_method.get(arm, {}))
    data["method"].update(arm_method(arm))
    for key, value in {**axes, **(chosen or {}).get(tuning_key(dataset, axes, arm), {})}.items():
        set_dotted(data, key, value)
    data.update(seed=seed, arm=arm, out=str(Path(out) / "runs" / run_name(dataset, axes, arm, seed)))
    where = f"grid cell {dataset}/{axes_label(axes)}/{arm}" if axes else f"grid cell {dataset}/{arm}"
    own = build_config(data, f"{where}/seed {seed}")  # its own values first, so that an error names this cell
    if arm == "supervised-matched" or (arm not in ("functional", "supervised") and own.data.few_labels):
        functional = cell_config(config, dataset, "functional", seed, out, axes, chosen)
        data["trainer"].update(matched_epochs(functional, own))
    return build_config(data, f"{where}/seed {seed}")


def matched_epochs(functional: Config, arm: Config) -> dict[str, int | float]:
    """The epochs that give `arm` the functional cell's image passes, from the passes one step of each
    stage makes (counted on a probe step, `fkt.compute.passes_per_step`). Every arm's epoch has the same
    number of steps: a pass over the training images with every image labelled, a pass over the pool
    with few labels (FKTDataModule.train_loader). So an arm trains functional epochs x (functional passes
    a step / its passes a step), a fraction where the ratio is one (the run ends at the nearest step,
    `fkt.engine.stage_steps`); representational pretrains as many epochs as functional trains and
    fine-tunes for the passes left."""
    epochs = functional.trainer.epochs
    budget = epochs * passes_per_step(functional, "functional")
    if arm.method.name == "representational":
        left = budget - epochs * passes_per_step(arm, "pretrain")
        if left <= 0:
            raise UserError(f"grid arm {arm.arm}: its SSL pretraining alone makes more image passes than "
                            "the functional arm it is matched to")
        return {"pretrain_epochs": epochs, "epochs": as_epochs(left / passes_per_step(arm, "supervised"))}
    return {"epochs": as_epochs(budget / passes_per_step(arm, arm.method.name))}


def as_epochs(value: float) -> int | float:
    """Epochs to 4 decimals (well under a step), a whole number as an int, as a preset would write it."""
    value = round(value, 4)
    return int(value) if value.is_integer() else value

def axis_points(config: Config) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the first axis varying slowest; [{}] without axes."""
    keys = list(config.grid.axes)
    return [dict(zip(keys, values)) for values in itertools.product(*config.grid.axes.values())]


def grid_plan(config: Config, out: Path, chosen: dict[str, dict[str, Any]] | None = None) -> list[Cell]:
    """Datasets x axis values x arms x seeds, in that order; every cell validated, none sharing a folder."""
    datasets = config.grid.datasets or [config.data.dataset]
    plan = [Cell(cell_config(config, dataset, arm, seed, out, axes, chosen), axes) for dataset in datasets
            for axes in axis_points(config) for arm in config.grid.methods for seed in config.grid.seeds]
    seen: dict[Path, Cell] = {}
    for cell in plan:
        check_method(cell.config)
        other = seen.setdefault(Path(cell.config.out), cell)
        if other is not cell:
            raise UserError(f"grid.axes: {other.axes} and {cell.axes} would share the run directory "
                            f"{cell.config.out}; give the values distinct names")
    return plan


def cells(config: Config, out: Path) -> list[Config]:
    return [cell.config for cell in grid_plan(config, out)]


def signature(config: Config, ignored: tuple[str, ...]) -> str:
    """What training depends on: the whole config but the `ignored` fields, as one comparable string."""
    data = config.to_dict()
    for field in ignored:
        *sections, leaf = field.split(".")
        node = data
        for section in sections:
            node = node.get(section, {})
        node.pop(leaf, None)
    return json.dumps(data, sort_keys=True, default=str)


def earlier_twins(plan: list[Cell], method: str, ignored: tuple[str, ...]) -> dict[Path, Path]:
    """Run directory -> the first cell's run directory whose training (with `method`) cannot differ
    from it: same dataset and seed, nothing else that matters differs."""
    first: dict[str, Path] = {}
    sources = {}
    for cell in plan:
        if cell.config.method.name == method:
            here = Path(cell.config.out)
            source = first.setdefault(signature(cell.config, ignored), here)
            if source != here:
                sources[here] = source
    return sources


def pretraining_sources(plan: list[Cell]) -> dict[Path, Path]:
    return earlier_twins(plan, "representational", SSL_IGNORED_FIELDS)


def copy_sources(plan: list[Cell]) -> dict[Path, Path]:
    return earlier_twins(plan, "supervised", SUPERVISED_IGNORED_FIELDS)


def link_or_copy(source: str, target: str) -> None:
    """A hard link where the file system allows one, else a copy. Safe because fkt never writes a
    file in place: every write goes to a temp file that is renamed over the old name, which breaks
    the link instead of changing the other cell's file."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def copy_run(run_dir: Path, source: Path) -> None:
    """`source`'s finished run directory as `run_dir` (checkpoints, logs, metrics), marked as a copy;
    whole or not at all (a partial copy from an interrupted grid is replaced). Files are hard links
    where the file system allows."""
    partial = run_dir.with_name(run_dir.name + PARTIAL_COPY)
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, ignore=shutil.ignore_patterns("*.lock", COPY_MARKER),
                    copy_function=link_or_copy)
    atomic_write_json(partial / COPY_MARKER, {"from": source.name})
    shutil.rmtree(run_dir, ignore_errors=True)
    partial.rename(run_dir)


def share_pretraining(run_dir: Path, source: Path) -> bool:
    """Give `run_dir` `source`'s SSL stage before that cell trains: the engine then finds a finished
    stage and loads it instead of training it again (its passes and seconds come with it). Never over a
    stage the cell has of its own. A hard link where the file system allows (else a copy), made under a
    temp name and renamed, so every DDP rank can do it and none sees half a file."""
    here, there = RunDir(run_dir), RunDir(source)
    target, original = here.last(PRETRAIN), there.last(PRETRAIN)
    if target.exists() or here.metrics.exists() or not original.is_file():
        return False
    if is_rank_zero():  # first, so that a cell holding a shared stage always says so
        atomic_write_json(run_dir / SHARED_MARKER, {"from": source.name})
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    partial.unlink(missing_ok=True)
    link_or_copy(str(original), str(partial))
    os.replace(partial, target)
    return True


def annotated(run: dict, cell: Cell) -> dict:
    """A run's result with what the grid knows and the engine does not: its axis values (from the cell,
    whatever metrics.json says), the cell whose SSL stage it reused, and the cell it is a copy of, if any."""
    run = {**run, "axes": dict(cell.axes)}
    run.pop("shared_pretraining", None)
    copied = Path(cell.config.out) / COPY_MARKER
    if copied.exists():
        run["copy_of"] = json.loads(copied.read_text())["from"]
    marker = Path(cell.config.out) / SHARED_MARKER
    if marker.exists() and RunDir(cell.config.out).last(PRETRAIN).exists():
        run["shared_pretraining"] = json.loads(marker.read_text())["from"]
    return run


def run_grid(config: Config, out: Path, launcher: Launcher | None = None, dry_run: bool = False) -> str:
    """Run every cell not yet done through `launcher` (in this process by default), then write the report;
    returns results.md's Markdown (or, where the launcher does not wait or `dry_run`, what was done)."""
    out, launcher = Path(out), launcher or Sequential()
    if not is_rank_zero():  # other DDP ranks train the same tasks in rank 0's order; rank 0 alone reports
        Sequential().run(cell_waves(grid_plan(config, out, chosen_settings(out))), out / "launch")
        return ""
    if dry_run:
        plan = describe_plan(grid_plan(config, out, chosen_settings(out)), launcher, out)
        return f"{tuning_plan(config, out)}\n{plan}" if config.grid.tune else plan
    with RunLock(out, "reproduce --out"):
        return run_cells(config, out, launcher)


def run_cells(config: Config, out: Path, launcher: Launcher) -> str:
    chosen = tune_grid(config, out, launcher) if config.grid.tune else {}
    plan = grid_plan(config, out, chosen)  # every cell is validated before the first one trains
    for cell in plan:
        if RunDir(cell.config.out).metrics.exists():
            print(f"[fkt] {cell.config.out}: done already, skipped", flush=True)
    launcher.run(cell_waves(plan), out / "launch")
    if not launcher.waits:
        return (f"submitted the {len(plan)} cells of {out} ({launcher.name}); when they have ended, "
                f"`fkt report {out} --out {out}` writes the report")
    runs = [cell_result(cell) for cell in plan]
    return write_grid_report(out, runs, [Path(cell.config.out) for cell in plan])


class CellTask:
    """One cell as a launcher's task (picklable: its config as a dict). It waits for nothing itself: the
    launcher runs it in the wave after the cell whose SSL stage it reuses or whose run it copies."""

    def __init__(self, cell: Cell, source: Path | None, twin: Path | None) -> None:
        self.config, self.axes = cell.config.to_dict(), dict(cell.axes)
        self.source, self.twin = source, twin
        self.name = Path(cell.config.out).name
        self.ranks = cell.config.trainer.devices if isinstance(cell.config.trainer.devices, int) else 1

    def __call__(self) -> None:
        cell = Cell(build_config(self.config, f"grid cell {self.name}"), self.axes)
        if is_rank_zero():
            for other in (self.source, self.twin):
                if other is not None and not RunDir(other).metrics.exists():
                    raise UserError(f"{cell.config.out}: waits for {other}, which has not finished")
            run_cell(cell, self.source, self.twin)
        elif self.twin is None:  # another DDP rank (torchrun, a SLURM task): rank 0 reads, copies and reports
            if self.source is not None:
                share_pretraining(Path(cell.config.out), self.source)
            train(cell.config)


def cell_waves(plan: list[Cell]) -> list[list[CellTask]]:
    """The cells to run, as a launcher's waves: first every cell that trains on its own, then those that
    reuse an SSL pretraining of the first wave or copy one of its runs. Finished cells are left out."""
    sources, copies = pretraining_sources(plan), copy_sources(plan)
    waves: list[list[CellTask]] = [[], []]
    for cell in plan:
        run_dir = Path(cell.config.out)
        if not RunDir(run_dir).metrics.exists():
            task = CellTask(cell, sources.get(run_dir), copies.get(run_dir))
            waves[task.source is not None or task.twin is not None].append(task)
    return [wave for wave in waves if wave]


def cell_result(cell: Cell) -> dict:
    """A finished cell's metrics, as the grid reports them (`annotated`)."""
    metrics = RunDir(cell.config.out).metrics
    if not metrics.exists():
        raise UserError(f"{cell.config.out}: the cell did not finish (no metrics.json); rerun the same command")
    return annotated(json.loads(metrics.read_text()), cell)


def describe_plan(plan: list[Cell], launcher: Launcher, out: Path) -> str:
    """--dry-run: every cell, whether it is done, what it shares or copies, and how it would run."""
    sources, copies = pretraining_sources(plan), copy_sources(plan)
    lines = []
    for cell in plan:
        run_dir = Path(cell.config.out)
        state = "done" if RunDir(run_dir).metrics.exists() else "to run"
        if run_dir in copies:
            state += f", a copy of {copies[run_dir].name}"
        elif run_dir in sources:
            state += f", reusing the SSL pretraining of {sources[run_dir].name}"
        lines.append(f"{run_dir.name}: {state}")
    waves = cell_waves(plan)
    lines.append(f"{sum(map(len, waves))} of {len(plan)} cells to run, in {len(waves)} wave(s); "
                 + launcher.describe(waves, out / "launch"))
    return "\n".join(lines)


def run_cell(cell: Cell, source: Path | None, twin: Path | None = None) -> dict:
    """One cell's result: read back where it is done, copied where an earlier `twin` trained the same,
    else trained (on `source`'s SSL stage where there is one); metrics.json then also records the
    cell's axis values."""
    run_dir = Path(cell.config.out)
    metrics_file = RunDir(run_dir).metrics
    if metrics_file.exists():  # another launch of the grid finished it meanwhile
        return annotated(json.loads(metrics_file.read_text()), cell)
    if twin is not None:
        print(f"[fkt] {run_dir}: trains what {twin} trained; copied", flush=True)
        copy_run(run_dir, twin)
        run = annotated(json.loads(metrics_file.read_text()), cell)
        atomic_write_json(metrics_file, run)
        return run
    if source is not None and share_pretraining(run_dir, source):
        print(f"[fkt] {run_dir}: reusing the SSL pretraining of {source}", flush=True)
    print(f"[fkt] training {cell.config.arm} on {cell.config.data.dataset}, seed {cell.config.seed} -> {run_dir}",
          flush=True)
    run = annotated(train(cell.config), cell)
    if run["axes"] or "shared_pretraining" in run:
        atomic_write_json(metrics_file, run)
    return run
