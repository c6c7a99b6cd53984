"""Supervised contrastive learning (Khosla et al. 2020): SimCLR whose positives are every other
view of the same class, not only the other view of the same image.

Lightly has no SupCon loss, so `supcon_loss` writes out the paper's L^sup_out (eq. 2), averaged
over the 2B anchors as the authors' code does (the paper sums); tests/test_ssl_objectives.py
checks it against eq. 2 written out independently and against a case computed by hand.
Temperature 0.1 (the paper's), SimCLR's projector (512-512-128 at feature size 512).

It needs the label of every image in its batch: runs that withhold labels are refused.
"""

from __future__ import annotations

import math

import torch
from lightly.models.modules import SimCLRProjectionHead
from lightly.utils import dist
from torch.nn import functional as F

from fkt.errors import UserError
from fkt.ssl.base import Objective


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float, gather: bool = False) -> torch.Tensor:
    """L^sup_out over the rows of `z` (all views, any order) with their `labels`:
    mean_i  -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p/t) / sum_{a != i} exp(z_i.z_a/t) ),
    z L2-normalised, P(i) the other rows of i's class. With `gather`, every rank's rows are the
    candidates of this rank's anchors (as NT-Xent gathers negatives)."""
    anchors = F.normalize(z, dim=1)
    candidates, candidate_labels, offset = anchors, labels, 0
    if gather and dist.world_size() > 1:
        candidates, candidate_labels = torch.cat(dist.gather(anchors)), torch.cat(dist.gather(labels))
        offset = dist.rank() * len(anchors)
    logits = anchors @ candidates.T / temperature
    rows = torch.arange(len(anchors), device=z.device)
    itself = torch.zeros_like(logits, dtype=torch.bool)
    itself[rows, rows + offset] = True
    log_prob = logits.masked_fill(itself, float("-inf")).log_softmax(dim=1)
    positives = (labels[:, None] == candidate_labels[None, :]) & ~itself
    per_anchor = -log_prob.masked_fill(~positives, 0.0).sum(dim=1) / positives.sum(dim=1)
    return per_anchor.mean()


class SupCon(Objective):
    name = "supcon"
    uses_labels = True
    temperature = 0.1

    def __init__(self, backbone, feat_dim, config):
        super().__init__(backbone, feat_dim, config)
        self.projector = SimCLRProjectionHead(feat_dim, self.scaled(512), self.scaled(128))
        self.gather = False

    def distributed(self, world_size):
        self.gather = world_size > 1

    def forward(self, ctx, images, targets=None):
        if targets is None:
            raise RuntimeError("supcon: the method passed no labels for the SSL batch")
        h1, h2 = self.two_views(ctx, images)
        z = torch.cat([self.projector(h1), self.projector(h2)])
        return supcon_loss(z, targets.repeat(2), self.temperature, self.gather), h1

    def chance(self, batch_size):
        return math.log(2 * batch_size - 1)  # every similarity equal: uniform over the 2B-1 others

    @classmethod
    def check(cls, config):
        super().check(config)
        data = config.data
        field = ("data.labels_per_class" if data.labels_per_class is not None else "data.labelled_fraction"
                 if data.withholds_labels else "data.unlabelled_root" if data.few_labels else None)
        if field is not None:
            raise UserError(f"{field}: --ssl supcon takes its positives from the labels, so it needs every "
                            "training image labelled; use another --ssl")
