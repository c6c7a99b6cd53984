"""Losses and their weighting. The joint objective is L = L_ssl + lambda * L_ce."""

from __future__ import annotations

from typing import Callable

import torch
from lightly.loss import NTXentLoss
from torch import nn
from torch.nn import functional as F


def contrastive_loss(temperature: float, world_size: int = 1) -> nn.Module:
    """NT-Xent on cosine similarity; negatives gathered across ranks when there are several."""
    return NTXentLoss(temperature=temperature, gather_distributed=world_size > 1)


def classification_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets)


def weighted_total(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Sum of the loss terms, each times its weight (1 where none is given)."""
    return sum(weights.get(name, 1.0) * value for name, value in terms.items())


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or infinite; the message names the term and the step."""


def check_finite(terms: dict[str, torch.Tensor], step: int,
                 agree: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
    """Raise before the optimizer step, so the weights and the last checkpoint stay finite.

    `agree` combines the per-term flags over ranks (a min), so that every rank stops together.
    """
    finite = torch.stack([torch.isfinite(value.detach()).all() for value in terms.values()])
    if agree is not None:
        finite = agree(finite)
    if bool(finite.all()):
        return
    name = list(terms)[int((~finite).nonzero()[0])]
    value = terms[name].detach().flatten()
    shown = value[~torch.isfinite(value)][0].item() if not torch.isfinite(value).all() else "non-finite on another rank"
    raise NonFiniteLoss(f"loss term '{name}' is {shown} at step {step}")
