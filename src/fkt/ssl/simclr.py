"""SimCLR (Chen et al. 2020): NT-Xent between two views, the other images of the batch as negatives."""

from __future__ import annotations

import math

from lightly.models.modules import SimCLRProjectionHead

from fkt.objectives import contrastive_loss
from fkt.ssl.base import Objective


class SimCLR(Objective):
    name = "simclr"

    def __init__(self, backbone, feat_dim, config):
        super().__init__(backbone, feat_dim, config)
        model = config.model
        self.projector = SimCLRProjectionHead(feat_dim, model.proj_hidden_dim or feat_dim, model.proj_output_dim)
        self.loss = contrastive_loss(config.method.temperature)

    def distributed(self, world_size):
        # negatives from every rank's batch, as SimCLR's large-batch results assume
        self.loss = contrastive_loss(self.config.method.temperature, world_size)

    def forward(self, ctx, images, targets=None):
        h1, h2 = self.two_views(ctx, images)
        return self.loss(self.projector(h1), self.projector(h2)), h1

    def chance(self, batch_size):
        return math.log(2 * batch_size - 1)  # uniform over the 2B-1 candidates
