"""Runs one training run: run directory, Lightning Trainer per stage, final evaluation.

Layout of a run directory:
    config.yaml          the resolved config
    split.json           the train/val(/test) indices, reused when the run is repeated
    checkpoints/         best.ckpt (best val accuracy) and last.ckpt of the final stage;
                         checkpoints/<stage>/last.ckpt for earlier stages (SimCLR pretraining)
    logs/<stage>/        Lightning's CSV log (metrics.csv)
    tb/<stage>/          TensorBoard events
    metrics.json         test metrics of the best checkpoint, val accuracy, compute (per SSL stage its
                         term's start and end: compute.stages.<stage>.ssl), warnings (an SSL stage
                         that did not learn, fkt.learning)
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.accelerators import CUDAAccelerator
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from fkt.checkpointing import AtomicCheckpointIO, ResumeState, read_checkpoint
from fkt.config import Config, save_config
from fkt.data import dataset_info
from fkt.data.module import FKTDataModule
from fkt.errors import UserError
from fkt.evaluate import classification_metrics, load_checkpoint, predict
from fkt.io import RunLock, atomic_write_json, is_rank_zero
from fkt.learning import stage_warning
from fkt.methods import Method, Stage, stages
from fkt.objectives import NonFiniteLoss
from fkt.fusion import check_fusion
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
    if config.data.image_size is None:
        config.data.image_size = dataset_info(config.data.dataset).image_size
    return config


def checkpoint_dir(run_dir: Path, stage: Stage, final: bool) -> Path:
    return run_dir / "checkpoints" if final else run_dir / "checkpoints" / stage.name


def resumable_epochs(checkpoint: Path, config: Config, num_classes: int, trust: bool = False) -> int:
    """Training epochs a run's own last checkpoint has fully processed; refuses another run's."""
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
    return int(state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])


def check_method(config: Config) -> None:
    """Settings the SSL objective or the fusion cannot run with, in one line, before anything is written."""
    check_objective(config)
    check_fusion(config, probe_trainer(config).world_size)


def check_devices(config: Config) -> None:
    """`--devices` beyond what this machine has, in one line (Lightning would spawn or fail late)."""
    t = config.trainer
    if not (isinstance(t.devices, int) or str(t.devices).isdigit()):
        return
    wanted = int(t.devices)
    gpu = t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto" and torch.cuda.is_available())
    have = torch.cuda.device_count() if gpu else (os.cpu_count() or 1)
    what = "GPU(s)" if gpu else "CPU core(s)"
    if wanted < 1 or wanted > have:
        raise UserError(f"--devices {wanted}: this machine has {have} {what}")


def build_trainer(config: Config, run_dir: Path, stage: Stage, final: bool) -> pl.Trainer:
    ckpt_dir = checkpoint_dir(run_dir, stage, final)
    t = config.trainer
    callbacks: list[pl.Callback] = []
    if final:  # best.ckpt on validation accuracy; SimCLR pretraining has no labels to select on
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/acc", mode="max",
                                         auto_insert_metric_name=False, enable_version_counter=False))
    callbacks.append(ResumeState(ckpt_dir / "last.ckpt", t.checkpoint_every_n_steps, t.checkpoint_every_minutes))
    loggers = [CSVLogger(run_dir, name="logs", version=stage.name),
               TensorBoardLogger(run_dir, name="tb", version=stage.name, default_hp_metric=False)]
    return make_trainer(
        config,
        max_epochs=stage.epochs,
        plugins=[AtomicCheckpointIO()],
        logger=loggers,
        callbacks=[*callbacks, LearningRateMonitor(logging_interval="epoch")],
        default_root_dir=run_dir,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        # SimCLR pretraining has no labels to validate on; the final stage selects on val accuracy.
        limit_val_batches=1.0 if final else 0,
        num_sanity_val_steps=0,
    )


def make_trainer(config: Config, **settings: Any) -> pl.Trainer:
    """A Trainer with the run's hardware settings; a bad value is the user's, in one line."""
    t = config.trainer
    try:
        return pl.Trainer(
            accelerator=t.accelerator,
            devices=t.devices,
            num_nodes=t.num_nodes,
            strategy=t.strategy,
            precision=t.precision,
            deterministic=t.deterministic,
            sync_batchnorm=bool(t.sync_batchnorm),
            # the data module shards and orders the data itself (fkt.data.sampler), resumably
            use_distributed_sampler=False,
            **settings,
        )
    except (MisconfigurationException, ImportError, ValueError, RuntimeError, TypeError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        raise UserError(f"--accelerator {t.accelerator} --devices {t.devices} --strategy {t.strategy} "
                        f"--precision {t.precision}: {message}") from None


def probe_trainer(config: Config) -> pl.Trainer:
    """A Trainer that never runs: what Lightning makes of the hardware settings (accelerator, world
    size), so that a check asks Lightning rather than guessing (about 6 ms)."""
    chatter = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    level = chatter.level
    chatter.setLevel(logging.WARNING)  # "GPU available: ..." is said once, by the real Trainer
    try:
        return make_trainer(config.model_copy(update={"trainer": config.trainer.model_copy(
            update={"sync_batchnorm": False})}), logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False)
    finally:
        chatter.setLevel(level)


def check_hardware(config: Config) -> Config:
    """Refuse impossible hardware settings before anything is written; settle the ones left to
    the hardware (sync_batchnorm) so that the saved config says what ran."""
    check_devices(config)
    probe = probe_trainer(config)
    on_gpu = isinstance(probe.accelerator, CUDAAccelerator)
    wanted = config.trainer.sync_batchnorm
    if wanted and not on_gpu:
        raise UserError("--sync-batchnorm: needs GPUs (torch's SyncBatchNorm has no CPU kernels)")
    config = config.model_copy(deep=True)
    # SimCLR's choice: with per-GPU statistics, the two views of an image share a batch's statistics
    # and the contrastive task can be solved through them.
    config.trainer.sync_batchnorm = wanted if wanted is not None else on_gpu and probe.world_size > 1
    return config


def evaluation_device(config: Config) -> torch.device:
    wants_gpu = config.trainer.accelerator in ("auto", "gpu", "cuda")
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


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


def any_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").rglob("last.ckpt"))


def train(config: Config, resume: bool = False, trust: bool = False) -> dict[str, Any]:
    """Train every stage of the configured method, then evaluate the best checkpoint once on test.

    Rerunning on the same `--out` resumes from the last checkpoint (mid-epoch where one was saved)
    and skips finished stages; `resume=True` insists that there is something to resume. Checkpoints
    are read as data unless `trust` (see `read_checkpoint`).
    """
    if config.out is None:
        raise UserError("--out is required: the run directory to write")
    quiet_lightning()
    config = check_hardware(resolved(config))
    check_method(config)
    run_dir = Path(config.out)
    if resume and not any_checkpoint(run_dir):
        raise UserError(f"--resume: no checkpoint under {run_dir / 'checkpoints'} to resume from")
    owner = is_rank_zero()
    with run_directory(run_dir, owner):
        data = FKTDataModule(config, split_file=run_dir / "split.json")
        data.setup()  # bad data stops the run here, before anything else is written
        if owner:
            save_config(config, run_dir / "config.yaml")
        pl.seed_everything(config.seed, workers=True, verbose=False)
        compute = train_stages(config, run_dir, data, trust)
        if compute is None:
            return {}
        return evaluate_run(config, run_dir, data, compute)


def train_stages(config: Config, run_dir: Path, data: FKTDataModule, trust: bool = False) -> dict[str, Any] | None:
    """Fit each stage (or reload it where a previous run finished it); None on ranks other than 0."""
    classes = data.classes
    compute: dict[str, Any] = {"epochs": 0, "image_passes": 0, "passes_by_term": {}, "teacher_forwards": 0,
                               "train_seconds": 0.0, "stages": {}}
    plan = stages(config)
    previous: Method | None = None
    is_global_zero = True
    for i, stage in enumerate(plan):
        final = i == len(plan) - 1
        last = checkpoint_dir(run_dir, stage, final) / "last.ckpt"
        resume = last if last.exists() else None
        if resume is not None and resumable_epochs(resume, config, len(classes), trust) >= stage.epochs:
            module = load_checkpoint(resume, trust)  # finished before an interruption: nothing to redo
        else:
            module = stage.module(config=config.to_dict(), num_classes=len(classes), classes=classes,
                                  freeze_backbone=stage.freeze_backbone)
            if stage.init_from is not None:
                module.backbone.load_state_dict(previous.backbone.state_dict())
            trainer = build_trainer(config, run_dir, stage, final)
            try:
                trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=not trust)
            except NonFiniteLoss as err:
                kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was saved yet"
                raise NonFiniteLoss(f"{stage.name}: {err}; {kept}") from None
            is_global_zero = trainer.is_global_zero
        passes = module.image_passes
        seconds = round(module.train_seconds, 2)
        compute["stages"][stage.name] = {"module": module.name, "epochs": stage.epochs,
                                         "image_passes": passes, "passes_by_term": module.passes_by_term,
                                         "teacher_forwards": module.teacher_forwards,
                                         "train_seconds": seconds, "resumed": resume is not None}
        progress = module.ssl_progress()
        if progress is not None:  # an SSL stage that ran to its end without learning must not pass unnoticed
            warning = stage_warning(stage.name, progress)
            compute["stages"][stage.name]["ssl"] = {**progress, "warning": warning}
            if warning is not None and is_rank_zero():
                print(f"[fkt] warning: {warning}", file=sys.stderr, flush=True)
        for term, count in module.passes_by_term.items():
            compute["passes_by_term"][term] = compute["passes_by_term"].get(term, 0) + count
        compute["epochs"] += stage.epochs
        compute["image_passes"] += passes
        compute["teacher_forwards"] += module.teacher_forwards
        compute["train_seconds"] += seconds
        previous = module
    compute["train_seconds"] = round(compute["train_seconds"], 2)
    return compute if is_global_zero else None


def evaluate_run(config: Config, run_dir: Path, data: FKTDataModule, compute: dict[str, Any]) -> dict[str, Any]:
    """Val and test metrics of the best checkpoint (the test set's only use), written to metrics.json."""
    best = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    device = evaluation_device(config)
    bundle = data.bundle
    results: dict[str, Any] = {
        "method": config.method.name,
        "arm": config.arm or config.method.name,
        "dataset": config.data.dataset,
        "seed": config.seed,
        "backbone": config.model.backbone,
    }
    for split in ("val", "test"):
        logits, targets = predict(best, data.loader(split), device)
        results[split] = classification_metrics(logits, targets, data.classes, ordinal=bundle.ordinal)
    results.update(representation_metrics(best, data, device, config))
    results["images"] = data.counts  # training images with and without labels
    results["compute"] = compute
    # each SSL stage whose term did not learn (fkt.learning), in one line each; empty where all did
    results["warnings"] = [stage["ssl"]["warning"] for stage in compute["stages"].values()
                           if (stage.get("ssl") or {}).get("warning")]
    results["classes"] = data.classes
    results["data_notes"] = bundle.notes
    skipped = getattr(bundle, "skipped", [])
    results["skipped_images"] = {"count": len(skipped), "files": [f"{path}: {why}" for path, why in skipped]}
    results["checkpoint"] = "checkpoints/best.ckpt"
    atomic_write_json(run_dir / "metrics.json", results)
    return results


def representation_metrics(module: Method, data: FKTDataModule, device: torch.device, config: Config,
                           probes: list[str] | None = None, corruptions: bool | None = None) -> dict[str, Any]:
    """Beyond clean test metrics: probes of the frozen backbone (k-NN, linear) and the test accuracy
    under common corruptions, as `config.evaluate` says unless `probes` or `corruptions` say otherwise."""
    settings = config.evaluate
    probes = settings.probes if probes is None else probes
    results: dict[str, Any] = {}
    if probes:
        from fkt.probes import probe_accuracies

        results["probes"] = probe_accuracies(module, data, list(probes), device)
    if settings.corruptions if corruptions is None else corruptions:
        from fkt.corruptions import corruption_accuracy

        loader = data.loader("test", limit=settings.corruption_images)
        results["corruptions"] = corruption_accuracy(module, loader, device, settings.corruption_seed)
        results["corruptions"]["images"] = len(loader.dataset)
    return results


def checkpoint_data(module: Method, checkpoint: Path, data_root: Path | None = None) -> FKTDataModule:
    """The data a checkpoint was trained on, with its run's saved split where the run directory
    is at hand (`<run>/checkpoints/[<stage>/]x.ckpt`), else the same split made again."""
    config = module.cfg.model_copy(deep=True)
    if data_root is not None:
        config.data.root = data_root
    folder = Path(checkpoint).resolve().parent
    candidates = [folder.parent / "split.json", folder.parent.parent / "split.json"]
    split_file = next((c for c in candidates if c.exists()), None)
    data = FKTDataModule(config, split_file=split_file)
    data.setup()
    return data


def evaluate_checkpoint(checkpoint: Path, dataset: str | None, data_root: Path | None, out: Path | None,
                        probes: list[str] = (), corruptions: bool = False, trust: bool = False) -> dict[str, Any]:
    """Test metrics of a saved checkpoint, on the same split its run used where that is known; with
    `probes` and `corruptions`, the representation and robustness measures as well. An SSL pretraining stage
    has no trained classifier: it gets the k-NN probe instead of test metrics."""
    module = load_checkpoint(checkpoint, trust)
    if dataset is not None and dataset != module.cfg.data.dataset:
        raise UserError(f"--dataset {dataset}: the checkpoint was trained on {module.cfg.data.dataset}")
    data = checkpoint_data(module, checkpoint, data_root)
    if data.classes != module.hparams.classes and module.hparams.classes is not None:
        raise UserError(f"--checkpoint {checkpoint}: its classes differ from the dataset's")
    device = evaluation_device(module.cfg)
    results: dict[str, Any] = {"checkpoint": str(checkpoint), "dataset": module.cfg.data.dataset,
                               "module": module.name}
    if not module.trains_classifier:
        print(f"[fkt] {checkpoint}: an SSL pretraining stage, whose classifier was never trained: "
              "no test metrics or corruption accuracy; its backbone is probed instead", flush=True)
        probes = list(probes) or ["knn"]
    else:
        logits, targets = predict(module, data.loader("test"), device)
        results["test"] = classification_metrics(logits, targets, data.classes, ordinal=data.bundle.ordinal)
    results.update(representation_metrics(module, data, device, module.cfg, list(probes),
                                          corruptions and module.trains_classifier))
    if out is not None:
        atomic_write_json(Path(out) / "eval.json", results)
    return results
