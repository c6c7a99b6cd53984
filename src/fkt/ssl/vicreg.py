"""VICReg (Bardes et al. 2022): invariance (MSE between views) + variance (each dimension's
std over the batch kept above 1) + covariance (off-diagonal covariances pushed to 0), weighted
25/25/1 as in the paper. Projector 512-2048-2048 at feature size 512 (lightly's example);
symmetric in the two views by construction."""

from __future__ import annotations

from lightly.loss import VICRegLoss
from lightly.models.modules.heads import VICRegProjectionHead  # not re-exported by lightly.models.modules

from fkt.ssl.base import Objective


class VICReg(Objective):
    name = "vicreg"

    def __init__(self, backbone, feat_dim, config):
        super().__init__(backbone, feat_dim, config)
        self.projector = VICRegProjectionHead(feat_dim, self.scaled(2048), self.scaled(2048), num_layers=2)
        self.loss = VICRegLoss()

    def distributed(self, world_size):
        # variance and covariance over the global batch (the invariance term is per image anyway)
        self.loss = VICRegLoss(gather_distributed=world_size > 1)

    def forward(self, ctx, images, targets=None):
        h1, h2 = self.two_views(ctx, images)
        return self.loss(self.projector(h1), self.projector(h2)), h1
