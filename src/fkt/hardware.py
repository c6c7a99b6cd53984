"""The hardware a run is on: which device, how many, and the Trainer's hardware settings.

Every question about the hardware is asked here, and answered by Lightning where it can
(`probe_trainer`), so that a check, a run, the bench, `fkt predict` and evaluation agree.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.accelerators import CUDAAccelerator

from fkt.config import Config
from fkt.errors import UserError


def resolve_device(name: str, flag: str = "--device") -> torch.device:
    """cpu, cuda, cuda:N or auto (a GPU where there is one) as a device this machine has."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UserError(f"{flag} {name}: no CUDA GPU on this machine (torch {torch.__version__})")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"{flag} {name}: only {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(f"cuda:{index}")  # with its index: torch.cuda.set_device and Lightning want one
    raise UserError(f"{flag} {name}: choose cpu, cuda, cuda:N or auto")


def evaluation_device(config: Config) -> torch.device:
    """Where a run's checkpoints are evaluated after training: a GPU if its accelerator allows one
    and there is one, else the CPU."""
    return resolve_device("auto" if config.trainer.accelerator in ("auto", "gpu", "cuda") else "cpu")


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
