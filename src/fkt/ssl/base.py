"""What every self-supervised objective is to the shared module: one small part.

An objective owns its heads, its loss and, where it has one, its momentum teacher. The
method hands it the step's context (`fkt.step.StepContext`: views, counted backbone and
teacher passes, the step) and a batch, and gets back the loss and the first view's student
features, which the cross-entropy may reuse. Nothing about an objective lives in the methods,
and an objective sees nothing of the method.
"""

from __future__ import annotations

import copy
import torch
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from fkt.config import Config
from fkt.errors import UserError
from fkt.step import StepContext


def keep_in_checkpoints(module: nn.Module, *buffers: str) -> nn.Module:
    """Make buffers that lightly registers as non-persistent (a queue, its pointer) part of the
    state dict: a resumed run must go on with the queue it had, not a fresh random one."""
    for name in buffers:
        module.register_buffer(name, getattr(module, name), persistent=True)
    return module


class Objective(nn.Module):
    """Subclasses set `name` and implement `forward`. The no-learning check reads `floor` (the
    lowest value the loss can take) and `chance` (its value for a network that has learnt nothing,
    where that is known)."""

    name = ""
    uses_labels = False  # supcon: the labelled images' classes are its positives
    floor = 0.0
    # Every head here batch-normalises over the batch (and the losses of Barlow Twins and VICReg
    # standardise over it): with one image a step that is undefined (torch raises), from two on it
    # runs. Bigger batches are a matter of quality, not of running, so 2 is the limit we enforce.
    min_batch = 2

    def __init__(self, backbone: nn.Module, feat_dim: int, config: Config) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.config = config

    def scaled(self, width: int) -> int:
        """A head width from lightly's ResNet-18 examples (feature size 512), scaled with the
        backbone's feature size: ResNet-18/34 get lightly's CIFAR heads, ResNet-50 four times them
        (which is the papers' 8192-wide Barlow Twins/VICReg projector and BYOL's 4096 hidden layer)."""
        return max(1, round(width * self.feat_dim / 512))

    def forward(self, ctx: StepContext, images: torch.Tensor,
                targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, the first view's backbone features) for a batch of raw images."""
        raise NotImplementedError

    def two_views(self, ctx: StepContext, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features of two random views of each image, counted as SSL passes."""
        return self.encoded_views(ctx, images)[2:]

    def encoded_views(self, ctx: StepContext, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The two views themselves (for a teacher) and their student features (v1, v2, h1, h2)."""
        v1, v2 = ctx.view(images), ctx.view(images)
        return v1, v2, ctx.encode(v1, "ssl"), ctx.encode(v2, "ssl")

    def trainable(self) -> list[nn.Module]:
        """The parts the optimizer updates: every child but the teacher."""
        return [module for name, module in self.named_children() if not name.startswith("teacher")]

    def chance(self, batch_size: int) -> float | None:
        return None

    def settle_steps(self, batch_size: int) -> int:
        """Steps before the loss means what it means at the end (a queue filling): the no-learning
        check starts its first window there."""
        return 0

    @classmethod
    def check(cls, config: Config) -> None:
        """Raise UserError, naming the field, where the objective cannot run with these settings
        (called before a run writes anything)."""
        if config.data.batch_size < cls.min_batch:
            raise UserError(f"data.batch_size={config.data.batch_size}: --ssl {cls.name} needs at least "
                            f"{cls.min_batch} images a step (its heads batch-normalise over the batch)")

    def distributed(self, world_size: int) -> None:
        """Called once the rank count is known, for losses that gather across ranks."""


class MomentumObjective(Objective):
    """An objective with a teacher: a momentum copy of the backbone and of `teacher_of` heads,
    never trained by gradients, moved towards the student with a momentum that rises from
    `momentum_start` to 1 on a cosine (BYOL's schedule).

    The teacher follows at the start of each training step (`follow`, first thing in `forward`),
    as in lightly's examples, and not after the optimizer step: Lightning saves a mid-epoch checkpoint in a
    callback's on_train_batch_end, which runs before the module's, so a teacher moved there would
    be missing that step's move in the checkpoint and a resumed run would not equal an
    uninterrupted one. Moving at step s with m(s) towards the student after step s-1 is the same
    schedule; only the move after the very last step, which nothing uses, is left out."""

    momentum_start = 0.99
    teacher_of: tuple[str, ...] = ("projector",)

    def make_teacher(self, backbone: nn.Module) -> None:
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_heads = nn.ModuleDict({name: self.copy_head(name) for name in self.teacher_of})
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_heads)

    def copy_head(self, name: str) -> nn.Module:
        return copy.deepcopy(getattr(self, name))

    def teacher(self, ctx: StepContext, views: torch.Tensor, head: str = "projector") -> torch.Tensor:
        with torch.no_grad():
            return self.teacher_heads[head](ctx.teacher_encode(self.teacher_backbone, views))

    def momentum(self, step: int, total_steps: int) -> float:
        return cosine_schedule(step, max(1, total_steps), self.momentum_start, 1.0)

    def follow(self, ctx: StepContext) -> None:
        """teacher <- m * teacher + (1 - m) * student, m from the schedule at this step."""
        if not self.training:
            return
        m = self.momentum(ctx.step, ctx.total_steps or 1)  # None outside a Trainer (a test's step by hand)
        update_momentum(ctx.backbone, self.teacher_backbone, m)
        for name in self.teacher_of:
            update_momentum(getattr(self, name), self.teacher_heads[name], m)
