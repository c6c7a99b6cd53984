"""The one Lightning module every method shares.

It holds the backbone, the classifier and (where the method uses one) the SSL objective, and
makes a training step: `losses(ctx, batch)` from the method, through the step's context
(`fkt.step.StepContext`: its views, its counted passes), then the total the optimizer
minimises. Every arm therefore gets the same views, heads, evaluation and budget accounting by
construction. What is not a method's lives elsewhere: per-step seeding, the NaN guard and the
SSL no-learning tracker are callbacks (`fkt.callbacks`), the optimizer and its schedule
`fkt.optim`, checkpoint contents `fkt.checkpointing`.
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from fkt import optim
from fkt.callbacks import EndMidEpoch, LearningCheck, MovingAverage, NaNGuard, StepSeed
from fkt.checkpointing import load_run_state, save_run_state
from fkt.config import Config, OptimizerConfig
from fkt.data import image_side
from fkt.learning import LossTrack
from fkt.models import build_backbone, classifier_head, compile_backbone
from fkt.objectives import classification_loss, weighted_total
from fkt.pseudo import build_pseudo_label
from fkt.ssl import build_objective
from fkt.step import StepContext

Batch = tuple[torch.Tensor, ...]  # (pool,) images, targets: see FKTDataModule.train_loader


class Method(pl.LightningModule):
    """Shared plumbing. Subclasses set `uses_ssl` and `train_data`, and implement `losses` and `trainable`."""

    name = "method"
    uses_ssl = False
    trains_classifier = True
    train_data = "labelled"  # or "pool" (every training image, labels unused) or "joint" (both, per step)

    def __init__(self, config: dict[str, Any], num_classes: int, classes: list[str] | None = None,
                 freeze_backbone: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg = cfg = Config.model_validate(config)
        self.freeze_backbone = freeze_backbone
        self.backbone, self.feat_dim = build_backbone(cfg.model.backbone, cfg.model.stem, cfg.model.pretrained_weights)
        self.memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
        self.backbone.to(memory_format=self.memory_format)
        self.classifier = classifier_head(self.feat_dim, num_classes)
        # the SSL objective's heads, loss and teacher (fkt.ssl); the same part in either method
        self.ssl = build_objective(cfg, self.backbone, self.feat_dim) if self.uses_ssl else None
        # a pseudo-label term on the pool (fkt.pseudo), where the arm adds one: the step then reads the pool too
        self.pseudo = build_pseudo_label(cfg.method) if self.trains_classifier else None
        if self.pseudo is not None:
            self.train_data = "joint"
        self.context = StepContext(self.backbone, image_side(cfg), self.memory_format)
        # the context's view makers as children too, so they move and cast with the module (64-true);
        # `normalize` is also inference's input: the image as the views are normalised
        self.views, self.weak, self.normalize = self.context.simclr, self.context.weak_view, self.context.normalize
        self.strong = self.context.strong_view
        # Validation metrics as torchmetrics states (non-persistent: no checkpoint keys), summed over
        # the DDP ranks at the epoch's end: exact whatever the size of each rank's shard.
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_loss = MeanMetric()  # the mean cross-entropy, each batch weighted by its size
        self.unchecked_terms: list[dict[str, torch.Tensor]] = []  # for the NaN guard, before the optimizer step
        self.ssl_track = LossTrack()  # the SSL term at the stage's start and end (fkt.learning)
        self.train_seconds = 0.0  # wall time in fit, carried across a resume
        self._clock: float | None = None

    # --- what a method defines -------------------------------------------------------
    def losses(self, ctx: StepContext, batch: Batch) -> dict[str, torch.Tensor]:
        """The step's loss terms on its batch: (images, targets), or (pool, pool truth, images, targets)
        where some training images are unlabelled (the SSL and pseudo-label terms read the pool; its
        truth, the withheld classes, feeds a diagnostic alone, see `fkt.pseudo`)."""
        raise NotImplementedError

    def trainable(self) -> list[nn.Module]:
        raise NotImplementedError

    def optimizer_settings(self) -> OptimizerConfig:
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.trainable() for p in m.parameters()]

    # --- building blocks the methods compose ------------------------------------------
    def ce_term(self, ctx: StepContext, images: torch.Tensor, targets: torch.Tensor,
                view_features: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy on the classifier input: the image, a weak view of it, or an SSL view (whose
        features are reused where the SSL term saw the same images)."""
        kind = self.cfg.method.classifier_input
        if kind == "view":
            features = view_features if view_features is not None else ctx.encode(ctx.view(images), "ce")
        else:
            features = ctx.encode(ctx.weak(images) if kind == "weak" else ctx.clean(images), "ce")
        return classification_loss(self.classifier(features), targets)

    def pseudo_terms(self, ctx: StepContext, pool: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The pseudo-label term on the step's pool batch, where the arm adds one; else none."""
        return {} if self.pseudo is None else {"pl": self.pseudo(ctx, self.classifier, *pool)}

    def supervised_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The classifier's side of the loss: the cross-entropy plus the weighted pseudo-label term."""
        return weighted_total({k: v for k, v in terms.items() if k != "ssl"}, {"pl": self.cfg.method.pl_weight})

    def combine(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss the step optimises; the functional method fuses its SSL and supervised sides its own way."""
        return terms["ssl"] if "ssl" in terms and len(terms) == 1 else self.supervised_loss(terms)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits for normalised images (inference, Grad-CAM)."""
        return self.classifier(self.features(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features of normalised images, outside training (probes, inference)."""
        return self.backbone(images.contiguous(memory_format=self.memory_format))

    @property
    def image_passes(self) -> int:
        return self.context.image_passes

    @property
    def global_batch(self) -> int:
        """Images a step over every rank (data.batch_size is per device)."""
        return self.cfg.data.batch_size * self.context.world_size

    # --- Lightning hooks ----------------------------------------------------------------
    def configure_callbacks(self) -> list[pl.Callback]:
        # validation, best.ckpt and the stage's end see the weights' moving average where one is asked for
        # (a stage that trains the classifier: SSL pretraining is never evaluated)
        ema = self.cfg.method.ema_decay if self.trains_classifier else None
        averaging = [MovingAverage(decay=ema)] if ema is not None else []
        return [StepSeed(), NaNGuard(), LearningCheck(), EndMidEpoch(), *averaging]

    def setup(self, stage: str) -> None:
        """Before the strategy wraps the model (DDP needs requires_grad settled by then)."""
        ctx = self.context
        ctx.world_size = self.trainer.world_size
        if ctx.world_size > 1:
            ctx.reduce_mean = lambda value: self.trainer.strategy.reduce(value, reduce_op="mean")
        if self.ssl is not None:
            self.ssl.distributed(ctx.world_size)
        self.settle_trainable()
        if self.cfg.trainer.compile and stage == "fit":
            compile_backbone(self.backbone, self.cfg.trainer.compile_mode)

    def settle_trainable(self) -> None:
        """Gradients for the parts this method trains, and none for the rest (a frozen backbone, a teacher)."""
        trainable = {id(p) for p in self.trainable_parameters()}
        for p in self.parameters():
            p.requires_grad_(id(p) in trainable)

    def on_train_start(self) -> None:
        self._clock = time.perf_counter()
        self.context.total_steps = int(self.trainer.estimated_stepping_batches)
        self.context.steps_per_epoch = self.trainer.num_training_batches

    def on_train_end(self) -> None:
        self.train_seconds = self.elapsed()
        self._clock = None

    def elapsed(self) -> float:
        return self.train_seconds + (time.perf_counter() - self._clock if self._clock is not None else 0.0)

    def train(self, mode: bool = True) -> "Method":
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()  # a linear probe keeps the pretrained batch-norm statistics
        return self

    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        terms = self.losses(self.context, batch)
        detached = {k: v.detach() for k, v in terms.items()}
        self.unchecked_terms.append(detached)
        loss = self.combine(terms)
        batch_size = batch[-1].shape[0]
        # Under DDP each rank's terms are those of its shard; their mean over the ranks (equal
        # shards) is the loss of the global batch, the one the step optimises and the logs report.
        sync = self.context.world_size > 1
        self.log_dict({f"train/{k}": v for k, v in detached.items()}, batch_size=batch_size, sync_dist=sync)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size, sync_dist=sync)
        self.log_dict(self.context.diagnostics, on_step=True, on_epoch=True, batch_size=batch_size, sync_dist=sync)
        # a CPU tensor (a Python number is copied to the GPU, a copy that waits for it); float64 keeps it exact
        self.log("compute/image_passes", torch.tensor(self.image_passes, dtype=torch.float64),
                 on_step=True, on_epoch=False, batch_size=batch_size)
        return {"loss": loss, "terms": detached}

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, targets = batch
        logits = self(self.normalize(images))
        # Under DDP each rank sees its shard of the validation set (FKTDataModule.loader), shards
        # that may differ in size by one: both metrics are the whole set's once their states are summed.
        self.val_acc.update(logits, targets)
        self.val_loss.update(classification_loss(logits, targets), weight=images.shape[0])
        self.log("val/loss", self.val_loss, batch_size=images.shape[0])
        self.log("val/acc", self.val_acc, prog_bar=True, batch_size=images.shape[0])

    def on_validation_epoch_end(self) -> None:
        # beside val/acc in the same log row, so learning curves can be drawn against compute
        # the same number on every rank (it counts all ranks); "max" keeps it exact and Lightning quiet
        self.log("val/image_passes", float(self.image_passes), sync_dist=True, reduce_fx="max")

    def configure_optimizers(self) -> Any:
        return optim.configure(self.cfg.optim, self.optimizer_settings(), self.trainable_parameters(), self.global_batch,
                               self.stage_length)

    def stage_length(self) -> tuple[int, float]:
        """(optimizer steps, epochs) of the stage, a fraction where it ends mid-epoch (`trainer.epochs`)."""
        total = int(self.trainer.estimated_stepping_batches)  # first: it sets up the loaders it counts
        return total, total / max(1, self.trainer.num_training_batches)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_run_state(self, checkpoint)
        for callback in self.trainer.callbacks if self._trainer is not None else []:
            if isinstance(callback, MovingAverage):
                callback.into_weights_only(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        load_run_state(self, checkpoint)
