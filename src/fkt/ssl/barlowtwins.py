"""Barlow Twins (Zbontar et al. 2021): the cross-correlation of the two views' standardised
projections is pushed to the identity (lambda 5e-3 on the off-diagonal, the paper's value).
Projector 512-2048-2048 at feature size 512, as lightly's ResNet-18 example. The loss is
symmetric in the two views already (swapping them transposes the matrix)."""

from __future__ import annotations

from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead

from fkt.ssl.base import Objective


class BarlowTwins(Objective):
    name = "barlowtwins"
    lambda_offdiag = 5e-3

    def __init__(self, backbone, feat_dim, config):
        super().__init__(backbone, feat_dim, config)
        self.projector = BarlowTwinsProjectionHead(feat_dim, self.scaled(2048), self.scaled(2048))
        self.loss = BarlowTwinsLoss(self.lambda_offdiag)

    def distributed(self, world_size):
        # the cross-correlation averaged over ranks: the matrix of the global batch
        self.loss = BarlowTwinsLoss(self.lambda_offdiag, gather_distributed=world_size > 1)

    def forward(self, ctx, images, targets=None):
        h1, h2 = self.two_views(ctx, images)
        return self.loss(self.projector(h1), self.projector(h2)), h1
