"""SimSiam (Chen & He 2021): BYOL without the teacher; the stop-gradient on the target
projection alone keeps it from collapsing. Heads as lightly's ResNet-18 example
(projector 512-512-128, predictor 128-64-128 at feature size 512)."""

from __future__ import annotations

from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

from fkt.ssl.base import Objective


class SimSiam(Objective):
    name = "simsiam"
    floor = -1.0

    def __init__(self, backbone, feat_dim, config):
        super().__init__(backbone, feat_dim, config)
        out = self.scaled(128)
        self.projector = SimSiamProjectionHead(feat_dim, self.scaled(512), out)
        self.predictor = SimSiamPredictionHead(out, self.scaled(64), out)
        self.loss = NegativeCosineSimilarity()

    def forward(self, ctx, images, targets=None):
        h1, h2 = self.two_views(ctx, images)
        z1, z2 = self.projector(h1), self.projector(h2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return 0.5 * (self.loss(p1, z2.detach()) + self.loss(p2, z1.detach())), h1
