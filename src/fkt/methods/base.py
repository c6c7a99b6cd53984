"""The one Lightning module every method shares.

It owns the backbone, the heads, the augmentation, validation, the optimizer and the
compute count; a method only says which loss terms a training step makes (`losses`),
which parts it trains and with which optimizer settings. Every arm therefore gets the
same views, heads, evaluation and budget accounting by construction.
"""

from __future__ import annotations

import math
import time
import zlib
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightly.utils.lars import LARS
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from fkt.config import Config, OptimizerConfig
from fkt.data.transforms import Normalize, SimCLRViews, WeakView
from fkt.data import dataset_info
from fkt.learning import LossTrack
from fkt.models import build_backbone, classifier_head, compile_backbone
from fkt.objectives import check_finite, classification_loss, weighted_total
from fkt.ssl import build_objective


def step_seed(seed: int, method: str, step: int, rank: int) -> int:
    """The seed of one training step's augmentations on one rank."""
    return int(np.random.SeedSequence([seed, zlib.crc32(method.encode()), step, rank]).generate_state(1, np.uint64)[0])


def scaled_lr(lr: float, rule: str, global_batch: int, reference: int) -> float:
    """The lr for a global batch: linear scaling (Goyal et al. 2017, SGD) or square-root scaling
    (usual for LARS/Adam at large batches), from the batch the configured lr was meant for."""
    ratio = global_batch / reference
    return lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


def build_optimizer(settings: OptimizerConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if settings.name == "adamw":
        # The fused kernel: on a 2-core CPU, 15 ms a ResNet-18 step against 68 ms for foreach.
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay, fused=True)
    kind = LARS if settings.name == "lars" else torch.optim.SGD
    return kind(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)


class Method(pl.LightningModule):
    """Shared plumbing. Subclasses set `uses_ssl` and `train_data`, and implement `losses` and `trainable`."""

    name = "method"
    uses_ssl = False
    trains_classifier = True
    train_data = "labelled"  # or "pool" (every training image, labels unused) or "joint" (both, per step)
    loss_weights: dict[str, float] = {}

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
        size = cfg.data.image_size or dataset_info(cfg.data.dataset).image_size
        self.views = SimCLRViews(size)
        self.weak = WeakView()
        self.normalize = Normalize()
        # Validation metrics as torchmetrics states (non-persistent: no checkpoint keys), summed over
        # the DDP ranks at the epoch's end: exact whatever the size of each rank's shard.
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_loss = MeanMetric()  # the mean cross-entropy, each batch weighted by its size
        self.passes_by_term: dict[str, int] = {}  # images through the backbone in training steps, per loss term
        self.teacher_forwards = 0  # images through a momentum teacher (forward only, no backward)
        self.world_size = 1
        self.train_seconds = 0.0  # wall time in fit, carried across a resume
        self._clock: float | None = None
        self._unchecked: list[dict[str, torch.Tensor]] = []  # loss terms since the last optimizer step
        self.ssl_track = LossTrack()  # the SSL term at the stage's start and end (fkt.learning)
        self.total_steps: int | None = None  # the stage's optimizer steps, once training starts

    # --- what a method defines -------------------------------------------------------
    def losses(self, images: torch.Tensor, targets: torch.Tensor,
               pool: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The step's loss terms on a labelled batch; `pool`, where some training images are
        unlabelled, is a batch of every training image for the SSL terms."""
        raise NotImplementedError

    def trainable(self) -> list[nn.Module]:
        raise NotImplementedError

    def optimizer_settings(self) -> OptimizerConfig:
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.trainable() for p in m.parameters()]

    # --- building blocks the methods compose ------------------------------------------
    def encode(self, images: torch.Tensor, term: str) -> torch.Tensor:
        """Backbone features; every image pushed through here in training counts as one pass of `term`."""
        if self.training:  # all ranks together: equal shards on every rank
            self.passes_by_term[term] = self.passes_by_term.get(term, 0) + images.shape[0] * self.world_size
        return self.features(images)

    @property
    def image_passes(self) -> int:
        return sum(self.passes_by_term.values())

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images.contiguous(memory_format=self.memory_format))

    def teacher_encode(self, backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """A teacher's backbone features, counted apart from the passes (no backward follows)."""
        self.teacher_forwards += images.shape[0] * self.world_size
        return backbone(images.contiguous(memory_format=self.memory_format))

    def ssl_term(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The objective's loss on views of `images`; also returns the first view's features."""
        return self.ssl(self, images, targets)

    def ce_term(self, images: torch.Tensor, targets: torch.Tensor,
                view_features: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy on the classifier input: the image, a weak view of it, or an SSL view (whose
        features are reused where the SSL term saw the same images)."""
        kind = self.cfg.method.classifier_input
        if kind == "view":
            features = view_features if view_features is not None else self.encode(self.views(images), "ce")
        else:
            features = self.encode((self.weak if kind == "weak" else self.normalize)(images), "ce")
        return classification_loss(self.classifier(features), targets)

    def combine(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss the step optimises; the functional method fuses its two terms its own way."""
        return weighted_total(terms, self.loss_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits for normalised images (inference, Grad-CAM)."""
        return self.classifier(self.features(images))

    # --- Lightning hooks ----------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Before the strategy wraps the model (DDP needs requires_grad settled by then)."""
        self.world_size = self.trainer.world_size
        if self.ssl is not None:
            self.ssl.distributed(self.world_size)
        trainable = {id(p) for p in self.trainable_parameters()}
        for p in self.parameters():
            p.requires_grad_(id(p) in trainable)
        if self.cfg.trainer.compile and stage == "fit":
            compile_backbone(self.backbone, self.cfg.trainer.compile_mode)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # The views of step s are drawn from a seed of (seed, method, s, rank) alone, so a run
        # resumed at step s draws exactly the views an uninterrupted run draws, on any rank count.
        torch.manual_seed(step_seed(self.cfg.seed, self.name, self.global_step, self.global_rank))

    def on_train_start(self) -> None:
        self._clock = time.perf_counter()
        self.total_steps = int(self.trainer.estimated_stepping_batches)

    @property
    def global_batch(self) -> int:
        """Images a step over every rank (data.batch_size is per device)."""
        return self.cfg.data.batch_size * self.world_size

    def ssl_progress(self) -> dict[str, Any] | None:
        """The SSL term at this stage's start and end, with what the no-learning check needs to judge it."""
        summary = self.ssl_track.summary() if self.ssl is not None else None
        if summary is None:
            return None
        batch = self.global_batch  # the batch whose other images are the negatives (SimCLR gathers them)
        settings = self.optimizer_settings()
        section = next((f"optim.{name}" for name in ("ssl", "supervised")
                        if getattr(self.cfg.optim, name) is settings), "optim")
        return {"objective": self.ssl.name, **summary, "floor": self.ssl.floor, "chance": self.ssl.chance(batch),
                "optimizer": f"{section} ({settings.name}, lr {settings.lr:g})"}

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

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        *pool, images, targets = batch  # (pool,) images, targets: see FKTDataModule.train_loader
        terms = self.losses(images, targets, *pool)
        detached = {k: v.detach() for k, v in terms.items()}
        self._unchecked.append(detached)  # checked before the optimizer step
        if self.ssl is not None and "ssl" in detached and self.total_steps is not None:
            self.ssl_track.add(self.global_step, detached["ssl"], self.total_steps,
                               self.ssl.settle_steps(self.global_batch))
        loss = self.combine(terms)
        batch_size = images.shape[0]
        # Under DDP each rank's terms are those of its shard; their mean over the ranks (equal
        # shards) is the loss of the global batch, the one the step optimises and the logs report.
        sync = self.world_size > 1
        self.log_dict({f"train/{k}": v for k, v in detached.items()}, batch_size=batch_size, sync_dist=sync)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size, sync_dist=sync)
        # a CPU tensor (a Python number is copied to the GPU, a copy that waits for it); float64 keeps it exact
        self.log("compute/image_passes", torch.tensor(self.image_passes, dtype=torch.float64),
                 on_step=True, on_epoch=False, batch_size=batch_size)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Here, after the backward is queued, and not in training_step: reading the flag waits
        # for the GPU, and a wait between forward and backward would leave it idle meanwhile.
        for terms in self._unchecked:
            check_finite(terms, self.global_step, self.all_ranks_min if self.world_size > 1 else None)
        self._unchecked.clear()

    def all_ranks_min(self, flags: torch.Tensor) -> torch.Tensor:
        """Every rank stops together, or a rank that did not see the NaN would wait forever."""
        return self.trainer.strategy.reduce(flags.float(), reduce_op="min") > 0

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
        schedule = self.cfg.optim
        settings = self.optimizer_settings()
        lr = scaled_lr(settings.lr, schedule.lr_scaling, self.global_batch, schedule.reference_batch)
        optimizer = build_optimizer(settings.model_copy(update={"lr": lr}), self.trainable_parameters())
        if schedule.schedule == "constant" and schedule.warmup_epochs == 0:
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(total - 1, int(schedule.warmup_epochs * total / max(1, self.trainer.max_epochs)))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if schedule.schedule == "constant":
                return 1.0
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["fkt"] = {"module": self.name, "image_passes": self.image_passes,
                             "passes_by_term": dict(self.passes_by_term), "teacher_forwards": self.teacher_forwards,
                             "train_seconds": self.elapsed(), "ssl_track": self.ssl_track.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get("fkt", {})
        # a checkpoint from before passes were split by term keeps its total, unsplit
        old = {"unsplit": info["image_passes"]} if info.get("image_passes") else {}
        self.passes_by_term = dict(info.get("passes_by_term", old))
        self.teacher_forwards = info.get("teacher_forwards", 0)
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("projector.")]:  # before objectives were parts
            state["ssl." + key] = state.pop(key)
        self.train_seconds = info.get("train_seconds", 0.0)
        if "ssl_track" in info:  # not in checkpoints from before the no-learning check
            self.ssl_track.load_state_dict(info["ssl_track"])
