"""MoCo v2 (Chen et al. 2020): the student's query of one view against the momentum teacher's
key of the other, with a queue of past keys as the negatives (lightly's NTXentLoss with a
memory bank). Temperature 0.1, a queue of 4096, projector 512-512-128 at feature size 512, as
lightly's ResNet-18 example; momentum 0.99 -> 1.

Asymmetric, as the MoCo v2 paper and lightly's example: one view through the student and one
through the teacher (symmetrising would double both and enqueue a second key per image, a false
negative for the other direction). No shuffled batch norm: on one device it cannot shuffle;
the queue keeps the keys of every rank under DDP instead (gathered before enqueueing).
The queue and its pointer are checkpointed (lightly keeps them out of the state dict).
"""

from __future__ import annotations

import math

from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead

from fkt.ssl.base import MomentumObjective, keep_in_checkpoints


class MoCo(MomentumObjective):
    name = "moco"
    momentum_start = 0.99
    temperature = 0.1
    queue = 4096

    def __init__(self, backbone, feat_dim, config):
        super().__init__(backbone, feat_dim, config)
        out = self.scaled(128)
        self.projector = MoCoProjectionHead(feat_dim, self.scaled(512), out)
        self.loss = NTXentLoss(self.temperature, memory_bank_size=(self.queue, out))
        keep_in_checkpoints(self.loss.memory_bank, "bank", "bank_ptr")
        self.make_teacher(backbone)

    def distributed(self, world_size):
        self.loss.memory_bank.gather_distributed = world_size > 1  # not rebuilt: the queue stays

    def forward(self, ctx, images, targets=None):
        self.follow(ctx)
        v1, v2 = ctx.view(images), ctx.view(images)
        h1 = ctx.encode(v1, "ssl")
        return self.loss(self.projector(h1), self.teacher(ctx, v2)), h1

    def chance(self, batch_size):
        return math.log(self.queue + 1)  # uniform over the positive and the queued negatives

    def settle_steps(self, batch_size):
        return math.ceil(self.queue / batch_size)  # until the random initial entries are all replaced
