"""BYOL (Grill et al. 2020): the student's prediction of one view regresses the momentum
teacher's projection of the other; no negatives. Heads as lightly's ResNet-18 example
(projector 512-1024-256, predictor 256-1024-256 at feature size 512), momentum 0.99 -> 1."""

from __future__ import annotations

from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

from fkt.ssl.base import MomentumObjective


class BYOL(MomentumObjective):
    name = "byol"
    floor = -1.0  # the negative cosine, averaged over the two directions
    momentum_start = 0.99

    def __init__(self, backbone, feat_dim, config):
        super().__init__(backbone, feat_dim, config)
        width, out = self.scaled(1024), self.scaled(256)
        self.projector = BYOLProjectionHead(feat_dim, width, out)
        self.predictor = BYOLPredictionHead(out, width, out)
        self.loss = NegativeCosineSimilarity()
        self.make_teacher(backbone)

    def forward(self, ctx, images, targets=None):
        self.follow(ctx)
        v1, v2, h1, h2 = self.encoded_views(ctx, images)
        p1, p2 = self.predictor(self.projector(h1)), self.predictor(self.projector(h2))
        z1, z2 = self.teacher(ctx, v1), self.teacher(ctx, v2)
        return 0.5 * (self.loss(p1, z2) + self.loss(p2, z1)), h1
