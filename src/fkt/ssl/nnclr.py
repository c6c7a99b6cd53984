"""NNCLR (Dwibedi et al. 2021): SimCLR whose positive is the nearest neighbour of a view's
projection in a memory bank of past projections (lightly's NNMemoryBankModule), predicted from
the other view; symmetrised. Temperature 0.1 and a bank of 4096 (the paper's temperature;
lightly's bank size for CIFAR), heads 512-512-128 and 128-512-128 at feature size 512.
The bank is checkpointed (lightly keeps it out of the state dict)."""

from __future__ import annotations

import math

from lightly.loss import NTXentLoss
from lightly.models.modules import NNCLRPredictionHead, NNCLRProjectionHead
from lightly.models.modules.nn_memory_bank import NNMemoryBankModule

from fkt.ssl.base import Objective, keep_in_checkpoints


class NNCLR(Objective):
    name = "nnclr"
    temperature = 0.1
    bank_size = 4096

    def __init__(self, backbone, feat_dim, config):
        super().__init__(backbone, feat_dim, config)
        out = self.scaled(128)
        self.projector = NNCLRProjectionHead(feat_dim, self.scaled(512), out)
        self.predictor = NNCLRPredictionHead(out, self.scaled(512), out)
        self.bank = keep_in_checkpoints(NNMemoryBankModule(size=(self.bank_size, out)), "bank", "bank_ptr")
        self.loss = NTXentLoss(self.temperature)

    def distributed(self, world_size):
        # negatives from every rank's batch; every rank's projections in the (then identical) bank
        self.loss = NTXentLoss(self.temperature, gather_distributed=world_size > 1)
        self.bank.gather_distributed = world_size > 1

    def forward(self, ctx, images, targets=None):
        h1, h2 = self.two_views(ctx, images)
        z1, z2 = self.projector(h1), self.projector(h2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        n1 = self.bank(z1.detach(), update=False)
        n2 = self.bank(z2.detach(), update=True)
        return 0.5 * (self.loss(n1, p2) + self.loss(n2, p1)), h1

    def chance(self, batch_size):
        return math.log(2 * batch_size - 1)  # NT-Xent: uniform over the 2B-1 candidates

    def settle_steps(self, batch_size):
        return math.ceil(self.bank_size / batch_size)  # until the random initial entries are all replaced
