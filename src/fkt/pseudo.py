"""Pseudo-labels on the unlabelled pool: a loss term any arm that trains the classifier can add.

FixMatch (Sohn et al. 2020): a weak view of each pool image gives class probabilities, and where
the largest reaches `pl_threshold` its class is the target of the cross-entropy on a strong view
(RandAugment and Cutout). As a term of its own it composes: supervised + fixmatch is FixMatch,
functional + fixmatch adds it to the joint step, representational + fixmatch fine-tunes with it.
The weak and strong views go through the backbone in one batch, as USB does (their batch-norm
statistics shared), and both count as passes of the term, "pl".
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fkt.config import MethodConfig
from fkt.step import StepContext


def fixmatch_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor,
                  threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, mask, targets): the mean over every pool image of mask * CE(strong, argmax weak), the
    mask 1 where the weak view's largest probability is at least `threshold`. No gradient reaches
    the weak view: it only names the target."""
    confidence, targets = weak_logits.detach().softmax(dim=-1).max(dim=-1)
    mask = (confidence >= threshold).to(strong_logits.dtype)
    loss = (F.cross_entropy(strong_logits, targets, reduction="none") * mask).mean()
    return loss, mask, targets


def pseudo_label_accuracy(mask: torch.Tensor, targets: torch.Tensor, truth: torch.Tensor) -> torch.Tensor | None:
    """The share of confident pseudo-labels that name the withheld class, over the images whose class is
    known (an image of a class outside the task, truth -2, is always wrong); None where there is none."""
    known = (mask > 0) & (truth != -1)
    if not bool(known.any()):
        return None
    return (targets[known] == truth[known]).float().mean()


class FixMatch(nn.Module):
    name = "fixmatch"

    def __init__(self, config: MethodConfig) -> None:
        super().__init__()
        self.threshold = config.pl_threshold

    def forward(self, ctx: StepContext, classifier: nn.Module, pool: torch.Tensor,
                truth: torch.Tensor | None = None) -> torch.Tensor:
        weak, strong = ctx.weak(pool), ctx.strong(pool)
        weak_logits, strong_logits = classifier(ctx.encode(torch.cat([weak, strong]), "pl")).chunk(2)
        loss, mask, targets = fixmatch_loss(weak_logits, strong_logits, self.threshold)
        with torch.no_grad():  # diagnostics: read after the loss is made, and never part of it
            ctx.record("pseudo/mask_rate", mask.mean())
            accuracy = pseudo_label_accuracy(mask, targets, truth) if truth is not None else None
            if accuracy is not None:
                ctx.record("pseudo/accuracy", accuracy)
        return loss


PSEUDO_LABELS = {FixMatch.name: FixMatch}


def build_pseudo_label(config: MethodConfig) -> nn.Module | None:
    """The configured pseudo-label term, or None (`method.pseudo_label: none`)."""
    return None if config.pseudo_label == "none" else PSEUDO_LABELS[config.pseudo_label](config)
