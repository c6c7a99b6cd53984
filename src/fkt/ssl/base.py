"""What every self-supervised objective is to the shared module: one small part.

An objective owns its heads, its loss and, where it has one, its momentum teacher. The
method hands it a batch and itself (for the views and the counted backbone passes) and
gets back the loss and the first view's student features, which the cross-entropy may
reuse. Nothing about an objective lives in the methods.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from fkt.config import Config

if TYPE_CHECKING:
    from fkt.methods.base import Method


class Objective(nn.Module):
    """Subclasses set `name` and implement `forward`. The no-learning check reads `floor` (the
    lowest value the loss can take) and `chance` (its value for a network that has learnt nothing,
    where that is known)."""

    name = ""
    uses_labels = False  # supcon: the labelled images' classes are its positives
    floor = 0.0

    def __init__(self, backbone: nn.Module, feat_dim: int, config: Config) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.config = config

    def forward(self, method: "Method", images: torch.Tensor,
                targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, the first view's backbone features) for a batch of raw images."""
        raise NotImplementedError

    def two_views(self, method: "Method", images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features of two random views of each image, counted as SSL passes."""
        return method.encode(method.views(images), "ssl"), method.encode(method.views(images), "ssl")

    def trainable(self) -> list[nn.Module]:
        """The parts the optimizer updates: every child but the teacher."""
        return [module for name, module in self.named_children() if not name.startswith("teacher")]

    def after_step(self, method: "Method", step: int, total_steps: int) -> None:
        """Called after each optimizer step (a teacher follows its student here)."""

    def chance(self, batch_size: int) -> float | None:
        return None

    @classmethod
    def check(cls, config: Config) -> None:
        """Raise UserError, naming the field, where the objective cannot run with these settings
        (called before a run writes anything)."""

    def distributed(self, world_size: int) -> None:
        """Called once the rank count is known, for losses that gather across ranks."""


class MomentumObjective(Objective):
    """An objective with a teacher: a momentum copy of the backbone and of `teacher_of` heads,
    never trained by gradients, moved towards the student after each step with a momentum that
    rises from `momentum_start` to 1 on a cosine (BYOL's schedule)."""

    momentum_start = 0.99
    teacher_of: tuple[str, ...] = ("projector",)

    def make_teacher(self, backbone: nn.Module) -> None:
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_heads = nn.ModuleDict({name: copy.deepcopy(getattr(self, name)) for name in self.teacher_of})
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_heads)

    def teacher(self, method: "Method", views: torch.Tensor, head: str = "projector") -> torch.Tensor:
        with torch.no_grad():
            return self.teacher_heads[head](method.teacher_encode(self.teacher_backbone, views))

    def momentum(self, step: int, total_steps: int) -> float:
        return cosine_schedule(step, max(1, total_steps), self.momentum_start, 1.0)

    def after_step(self, method: "Method", step: int, total_steps: int) -> None:
        m = self.momentum(step, total_steps)
        update_momentum(method.backbone, self.teacher_backbone, m)
        for name in self.teacher_of:
            update_momentum(getattr(self, name), self.teacher_heads[name], m)
