"""Runs one training run: its run directory (`fkt.rundir`), a Lightning Trainer per stage, the final
evaluation. A stage's compute (image passes and FLOPs, per term) is counted by its steps
(`fkt.step`, `fkt.compute`) and only summed here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from fkt.checkpointing import AtomicCheckpointIO, ResumeState, read_checkpoint
from fkt.compute import count_step
from fkt.config import Config, save_config
from fkt.data import image_side
from fkt.data.module import FKTDataModule
from fkt.errors import UserError
from fkt.evaluate import classification_metrics, predict, representation_metrics, skipped_images
from fkt.fusion import check_fusion
from fkt.hardware import check_hardware, evaluation_device, make_trainer, probe_trainer
from fkt.io import RunLock, atomic_write_json, is_rank_zero
from fkt.learning import stage_progress, stage_warning
from fkt.methods import Method, Stage, load_module, stages
from fkt.objectives import NonFiniteLoss
from fkt.rundir import RunDir
from fkt.ssl import check_objective


def quiet_lightning() -> None:
    """Drop Lightning's advertising and deprecation chatter; keep its real warnings."""
    for message in (".*LeafSpec.*", ".*smaller than the logging interval.*", ".*exists and is not empty.*",
                    ".*limit_val_batches=1.0.*"):
        warnings.filterwarnings("ignore", message=message)
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage() and "limit_val_batches" not in record.getMessage())


def resolved(config: Config) -> Config:
    """Fill in defaults that depend on the dataset, so the saved config says what ran."""
    config = config.model_copy(deep=True)
    config.data.image_size = image_side(config)
    return config


def resumable_progress(checkpoint: Path, config: Config, num_classes: int, trust: bool = False) -> tuple[int, int]:
    """(epochs fully processed, optimizer steps) of a run's own last checkpoint; refuses another run's."""
    try:
        state = read_checkpoint(checkpoint, trust, what="--out")
    except UserError as err:
        raise UserError(f"{err}; or delete it to start this run over") from None
    saved = state.get("hyper_parameters", {})
    theirs = Config.model_validate(saved["config"]) if "config" in saved else None
    if theirs is None or (theirs.method.name, theirs.model.backbone, theirs.model.stem, saved.get("num_classes")) != (
            config.method.name, config.model.backbone, config.model.stem, num_classes):
        raise UserError(f"{checkpoint}: left by a different run (method, backbone or classes differ); "
                        "use another --out or delete it")
    return int(state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]), int(state.get("global_step", 0))


def stage_steps(stage: Stage, data: FKTDataModule, stream: str, world: int) -> int:
    """The optimizer steps a stage of fractional epochs ends at (the grid's compute matching), to the
    nearest step; -1 for a whole number of epochs, which Lightning ends itself."""
    if float(stage.epochs).is_integer():
        return -1
    return max(1, round(stage.epochs * len(data.train_loader(stream, world))))


def check_method(config: Config) -> None:
    """Settings the SSL objective or the fusion cannot run with, in one line, before anything is written."""
    check_objective(config)
    check_fusion(config, probe_trainer(config).world_size)


def build_trainer(config: Config, run: RunDir, stage: Stage, final: bool, max_steps: int = -1,
                  extra: Sequence[pl.Callback] = ()) -> pl.Trainer:
    t = config.trainer
    callbacks: list[pl.Callback] = list(extra)
    if final:  # best.ckpt on validation accuracy (weights only: it is never resumed); pretraining has no labels
        callbacks.append(ModelCheckpoint(dirpath=run.checkpoints(), filename="best", monitor="val/acc", mode="max",
                                         save_weights_only=True, auto_insert_metric_name=False,
                                         enable_version_counter=False))
    last = run.last(None if final else stage.name)
    callbacks.append(ResumeState(last, t.checkpoint_every_n_steps, t.checkpoint_every_minutes))
    loggers = [CSVLogger(run.root, name="logs", version=stage.name),
               TensorBoardLogger(run.root, name="tb", version=stage.name, default_hp_metric=False)]
    return make_trainer(
        config,
        max_epochs=math.ceil(stage.epochs),
        max_steps=max_steps,
        plugins=[AtomicCheckpointIO()],
        logger=loggers,
        callbacks=[*callbacks, LearningRateMonitor(logging_interval="epoch")],
        default_root_dir=run.root,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        # SimCLR pretraining has no labels to validate on; the final stage selects on val accuracy.
        limit_val_batches=1.0 if final else 0,
        num_sanity_val_steps=0,
    )


@contextlib.contextmanager
def run_directory(run_dir: Path, owner: bool):
    """Hold the run directory's lock; a user error before anything was written leaves no folder behind."""
    if not owner:
        yield
        return
    created = not run_dir.exists()
    try:
        with RunLock(run_dir):
            yield
    except UserError:
        if created and all(p.name == ".fkt.lock" for p in run_dir.iterdir()):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def train(config: Config, resume: bool = False, trust: bool = False, *, test: bool = True,
          callbacks: Sequence[pl.Callback] = ()) -> dict[str, Any]:
    """Train every stage of the configured method, then evaluate the best checkpoint once on test.

    Rerunning on the same `--out` resumes from the last checkpoint (mid-epoch where one was saved)
    and skips finished stages; `resume=True` insists that there is something to resume. Checkpoints
    are read as data unless `trust` (see `read_checkpoint`). A tuning trial (fkt.tune) passes
    `test=False`, so that the test split is never read (validation metrics only), and `callbacks`,
    which join the final stage's Trainer (its pruning callback).
    """
    if config.out is None:
        raise UserError("--out is required: the run directory to write")
    quiet_lightning()
    config = check_hardware(resolved(config))
    check_method(config)
    run = RunDir(config.out)
    if resume and not run.any_last():
        raise UserError(f"--resume: no checkpoint under {run.checkpoints()} to resume from")
    owner = is_rank_zero()
    with run_directory(run.root, owner):
        data = FKTDataModule(config, split_file=run.split)
        data.setup()  # bad data stops the run here, before anything else is written
        config = data.config  # where the data module fitted a setting to the data (a batch capped), with a note
        if owner:
            save_config(config, run.config)
        pl.seed_everything(config.seed, workers=True, verbose=False)
        compute = train_stages(config, run, data, trust, callbacks)
        if compute is None:
            return {}
        return evaluate_run(config, run, data, compute, test)


def train_stages(config: Config, run: RunDir, data: FKTDataModule, trust: bool = False,
                 callbacks: Sequence[pl.Callback] = ()) -> dict[str, Any] | None:
    """Fit each stage (or reload it where a previous run finished it) and sum what each counted;
    None on ranks other than 0."""
    compute: dict[str, Any] = {"epochs": 0, "image_passes": 0, "passes_by_term": {}, "teacher_forwards": 0,
                               "flops": {}, "train_seconds": 0.0, "stages": {}}
    plan = stages(config)
    world = probe_trainer(config).world_size  # ranks each step ran on, every one making the probe step's FLOPs
    previous: Method | None = None
    is_global_zero = True
    for i, stage in enumerate(plan):
        if previous is not None:  # the next stage's heads start where the last one's view stream ended
            previous.context.continue_stream()
        final = i == len(plan) - 1
        module, resumed, is_global_zero = fit_stage(config, run, data, stage, final, previous, trust, world,
                                                    callbacks if final else ())
        previous = module
        if not is_global_zero:  # only rank 0 reports: no probe step for the others
            continue
        record = stage_compute(config, stage, module, data, resumed, world)
        compute["stages"][stage.name] = record
        for key in ("passes_by_term", "flops"):
            for term, count in record[key].items():
                compute[key][term] = compute[key].get(term, 0) + count
        for key in ("epochs", "image_passes", "teacher_forwards", "train_seconds"):
            compute[key] += record[key]
    compute["train_seconds"] = round(compute["train_seconds"], 2)
    return compute if is_global_zero else None


def fit_stage(config: Config, run: RunDir, data: FKTDataModule, stage: Stage, final: bool, previous: Method | None,
              trust: bool, world: int = 1, callbacks: Sequence[pl.Callback] = ()) -> tuple[Method, bool, bool]:
    """(the stage's module, whether it resumed, whether this is the global rank 0)."""
    classes = data.classes
    module = stage.module(config=config.to_dict(), num_classes=len(classes), classes=classes,
                          freeze_backbone=stage.freeze_backbone)
    max_steps = stage_steps(stage, data, module.train_data, world)
    last = run.last(None if final else stage.name)
    resume = last if last.exists() else None
    if resume is not None:
        epochs, steps = resumable_progress(resume, config, len(classes), trust)
        if epochs >= stage.epochs or 0 < max_steps <= steps:
            return load_module(resume, trust), True, True  # finished before an interruption: nothing to redo
    if stage.init_from is not None:
        module.backbone.load_state_dict(previous.backbone.state_dict())
    trainer = build_trainer(config, run, stage, final, max_steps, callbacks)
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=not trust)
    except NonFiniteLoss as err:
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was saved yet"
        raise NonFiniteLoss(f"{stage.name}: {err}; {kept}") from None
    return module, resume is not None, trainer.is_global_zero


def stage_compute(config: Config, stage: Stage, module: Method, data: FKTDataModule, resumed: bool,
                  world: int) -> dict[str, Any]:
    """What a stage spent: the passes and teacher forwards its steps counted, its FLOPs (one probe step's,
    measured here, times its steps on every rank), its seconds; and, for an SSL stage, whether its
    term learned (a stage that ran to its end without learning must not pass unnoticed)."""
    ctx = module.context
    step = count_step(stage.module, config, len(data.classes), evaluation_device(config), flops=True,
                      freeze_backbone=stage.freeze_backbone)
    scale = ctx.steps * world
    record: dict[str, Any] = {"module": module.name, "epochs": stage.epochs, "image_passes": ctx.image_passes,
                              "passes_by_term": dict(ctx.passes), "teacher_forwards": ctx.teacher_forwards,
                              "steps": ctx.steps, "flops_per_step": step.flops,
                              "flops": {term: value * scale for term, value in step.flops.items()},
                              "train_seconds": round(module.train_seconds, 2), "resumed": resumed}
    progress = stage_progress(module)
    if progress is not None:
        warning = stage_warning(stage.name, progress)
        record["ssl"] = {**progress, "warning": warning}
        if warning is not None and is_rank_zero():
            print(f"[fkt] warning: {warning}", file=sys.stderr, flush=True)
    return record


def evaluate_run(config: Config, run: RunDir, data: FKTDataModule, compute: dict[str, Any],
                 test: bool = True) -> dict[str, Any]:
    """Val and test metrics of the best checkpoint (the test set's only use), written to metrics.json;
    without `test`, val alone (and no probe or corruption, which measure on test)."""
    best = load_module(run.best)
    device = evaluation_device(config)
    bundle = data.bundle
    results: dict[str, Any] = {
        "method": config.method.name,
        "arm": config.arm or config.method.name,
        "dataset": config.data.dataset,
        "seed": config.seed,
        "backbone": config.model.backbone,
        "pseudo_label": config.method.pseudo_label,
        "ema_decay": config.method.ema_decay,  # None: the weights themselves were evaluated
    }
    for split in ("val", "test") if test else ("val",):
        logits, targets = predict(best, data.loader(split), device)
        results[split] = classification_metrics(logits, targets, data.classes, ordinal=bundle.ordinal)
    results.update(representation_metrics(best, data, device, config) if test else {})
    results["images"] = data.counts  # training images with and without labels
    results.update({"pool": data.pool_summary} if data.pool else {})  # with few labels: its mismatch, classes
    results["compute"] = compute
    # each SSL stage whose term did not learn (fkt.learning), in one line each; empty where all did
    results["warnings"] = [stage["ssl"]["warning"] for stage in compute["stages"].values()
                           if (stage.get("ssl") or {}).get("warning")]
    results["classes"] = data.classes
    results["data_notes"] = bundle.notes
    results["skipped_images"] = skipped_images(bundle)
    results["checkpoint"] = run.relative(run.best)
    atomic_write_json(run.metrics, results)
    return results
