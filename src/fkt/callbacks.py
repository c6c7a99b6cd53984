"""What every training step of every method needs besides its losses, as Lightning callbacks.

A method lists them in `configure_callbacks`, so every Trainer that fits it (a run, the bench, a
test) gets them, and the method's module keeps only what makes its losses.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EMAWeightAveraging

from fkt.objectives import check_finite


def step_seed(seed: int, method: str, step: int, rank: int) -> int:
    """The seed of one training step's views on one rank."""
    return int(np.random.SeedSequence([seed, zlib.crc32(method.encode()), step, rank]).generate_state(1, np.uint64)[0])


class StepSeed(pl.Callback):
    """Seeds each step's views from (seed, method, step, rank) alone, so a run resumed at step s
    draws exactly the views an uninterrupted run draws, on any rank count.

    torch's global generator is reseeded too (from another stream), for any layer that draws from
    it (dropout, drop path): resumed runs then match there as well."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        step, rank, seed = trainer.global_step, trainer.global_rank, pl_module.cfg.seed
        pl_module.context.start(step, step_seed(seed, pl_module.name, step, rank))
        torch.manual_seed(step_seed(seed, pl_module.name + "/global", step, rank))


class NaNGuard(pl.Callback):
    """Stops a run whose loss terms became NaN or infinite before the optimizer step, so the weights
    and the last checkpoint stay finite. Here, after the backward is queued, and not in the step:
    reading the flag waits for the GPU, and a wait between forward and backward would idle it."""

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: torch.optim.Optimizer) -> None:
        agree = None
        if trainer.world_size > 1:  # every rank stops together, or one that saw no NaN would wait forever
            def agree(flags: torch.Tensor) -> torch.Tensor:
                return trainer.strategy.reduce(flags.float(), reduce_op="min") > 0
        for terms in pl_module.unchecked_terms:
            check_finite(terms, trainer.global_step, agree)
        pl_module.unchecked_terms.clear()


class LearningCheck(pl.Callback):
    """Feeds the SSL term of each step to the module's `LossTrack` (`fkt.learning`), from which the
    engine says whether the stage's SSL term learned. Before any checkpoint of the step is saved
    (Lightning runs checkpoint callbacks last), so a resumed stage still knows its start."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        ssl, ctx = getattr(pl_module, "ssl", None), pl_module.context
        if ssl is None or ctx.total_steps is None or not isinstance(outputs, dict) or "ssl" not in outputs["terms"]:
            return
        pl_module.ssl_track.add(ctx.step, outputs["terms"]["ssl"], ctx.total_steps, ssl.settle_steps(pl_module.global_batch))


class EndMidEpoch(pl.Callback):
    """A stage of fractional epochs (the grid's compute matching) ends at `max_steps`, mid-epoch, where
    Lightning would not validate: asking it to stop there validates first, so best.ckpt sees the end."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class MovingAverage(EMAWeightAveraging):
    """Lightning's exponential moving average of the weights (`method.ema_decay`): validation sees it,
    full checkpoints hold it (with the weights themselves, to resume) and the stage ends on it.
    `into_weights_only` gives a weights-only checkpoint (best.ckpt) the average too: Lightning calls a
    callback's checkpoint hook on full checkpoints alone, the module's on every one."""

    def into_weights_only(self, checkpoint: dict[str, Any]) -> None:
        if self._average_model is not None and "optimizer_states" not in checkpoint:
            averaged = self._average_model.state_dict()
            checkpoint["state_dict"] = {k.removeprefix("module."): v for k, v in averaged.items() if k.startswith("module.")}
