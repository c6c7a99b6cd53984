"""Runs one training run: run directory, Lightning Trainer per stage, final evaluation.

Layout of a run directory:
    config.yaml          the resolved config
    split.json           the train/val(/test) indices, reused when the run is repeated
    checkpoints/         best.ckpt (best val accuracy) and last.ckpt of the final stage;
                         checkpoints/<stage>/last.ckpt for earlier stages (SimCLR pretraining)
    logs/<stage>/        Lightning's CSV log (metrics.csv)
    tb/<stage>/          TensorBoard events
    metrics.json         test metrics of the best checkpoint, val accuracy, compute
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from fkt.config import Config, save_config
from fkt.data import dataset_info
from fkt.data.module import FKTDataModule
from fkt.errors import UserError
from fkt.evaluate import classification_metrics, load_checkpoint, predict
from fkt.io import atomic_write_json
from fkt.methods import Method, Stage, stages


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


def resumable_epochs(checkpoint: Path, config: Config, num_classes: int) -> int:
    """Training epochs a run's own last checkpoint has fully processed; refuses another run's."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    saved = state.get("hyper_parameters", {})
    theirs = Config.model_validate(saved["config"]) if "config" in saved else None
    if theirs is None or (theirs.method.name, theirs.model.backbone, theirs.model.stem, saved.get("num_classes")) != (
            config.method.name, config.model.backbone, config.model.stem, num_classes):
        raise UserError(f"{checkpoint}: left by a different run (method, backbone or classes differ); "
                        "use another --out or delete it")
    return int(state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])


def build_trainer(config: Config, run_dir: Path, stage: Stage, final: bool) -> pl.Trainer:
    ckpt_dir = checkpoint_dir(run_dir, stage, final)
    if final:
        checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/acc", mode="max",
                                     save_last=True, auto_insert_metric_name=False)
    else:
        checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1)
    loggers = [CSVLogger(run_dir, name="logs", version=stage.name),
               TensorBoardLogger(run_dir, name="tb", version=stage.name, default_hp_metric=False)]
    t = config.trainer
    return pl.Trainer(
        max_epochs=stage.epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        deterministic=t.deterministic,
        logger=loggers,
        callbacks=[checkpoint, LearningRateMonitor(logging_interval="epoch")],
        default_root_dir=run_dir,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        # SimCLR pretraining has no labels to validate on; the final stage selects on val accuracy.
        limit_val_batches=1.0 if final else 0,
        num_sanity_val_steps=0,
    )


def evaluation_device(config: Config) -> torch.device:
    wants_gpu = config.trainer.accelerator in ("auto", "gpu", "cuda")
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


def train(config: Config) -> dict[str, Any]:
    """Train every stage of the configured method, then evaluate the best checkpoint once on test."""
    if config.out is None:
        raise UserError("--out is required: the run directory to write")
    quiet_lightning()
    config = resolved(config)
    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    pl.seed_everything(config.seed, workers=True, verbose=False)

    data = FKTDataModule(config, split_file=run_dir / "split.json")
    data.setup()
    classes = data.classes
    compute: dict[str, Any] = {"epochs": 0, "image_passes": 0, "train_seconds": 0.0, "stages": {}}
    plan = stages(config)
    previous: Method | None = None
    is_global_zero = True
    for i, stage in enumerate(plan):
        final = i == len(plan) - 1
        last = checkpoint_dir(run_dir, stage, final) / "last.ckpt"
        resume = last if last.exists() else None
        if resume is not None and resumable_epochs(resume, config, len(classes)) >= stage.epochs:
            module = load_checkpoint(resume)  # finished before an interruption: nothing to redo
        else:
            module = stage.module(config=config.to_dict(), num_classes=len(classes), classes=classes,
                                  freeze_backbone=stage.freeze_backbone)
            if stage.init_from is not None:
                module.backbone.load_state_dict(previous.backbone.state_dict())
            trainer = build_trainer(config, run_dir, stage, final)
            trainer.fit(module, datamodule=data, ckpt_path=resume)
            is_global_zero = trainer.is_global_zero
        passes = module.image_passes
        seconds = round(module.train_seconds, 2)
        compute["stages"][stage.name] = {"module": module.name, "epochs": stage.epochs,
                                         "image_passes": passes, "train_seconds": seconds,
                                         "resumed": resume is not None}
        compute["epochs"] += stage.epochs
        compute["image_passes"] += passes
        compute["train_seconds"] += seconds
        previous = module
    compute["train_seconds"] = round(compute["train_seconds"], 2)
    if not is_global_zero:
        return {}

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
        results[split] = classification_metrics(logits, targets, classes, ordinal=bundle.ordinal)
    results["compute"] = compute
    results["classes"] = classes
    results["data_notes"] = bundle.notes
    results["checkpoint"] = "checkpoints/best.ckpt"
    atomic_write_json(run_dir / "metrics.json", results)
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


def evaluate_checkpoint(checkpoint: Path, dataset: str | None, data_root: Path | None,
                        out: Path | None) -> dict[str, Any]:
    """Test metrics of a saved checkpoint, on the same split its run used where that is known."""
    module = load_checkpoint(checkpoint)
    if dataset is not None and dataset != module.cfg.data.dataset:
        raise UserError(f"--dataset {dataset}: the checkpoint was trained on {module.cfg.data.dataset}")
    data = checkpoint_data(module, checkpoint, data_root)
    if data.classes != module.hparams.classes and module.hparams.classes is not None:
        raise UserError(f"--checkpoint {checkpoint}: its classes differ from the dataset's")
    logits, targets = predict(module, data.loader("test"), evaluation_device(module.cfg))
    results = {"checkpoint": str(checkpoint), "dataset": module.cfg.data.dataset,
               "test": classification_metrics(logits, targets, data.classes, ordinal=data.bundle.ordinal)}
    if out is not None:
        atomic_write_json(Path(out) / "eval.json", results)
    return results
