"""Representational transfer: SimCLR pretraining, then supervised training from those weights.

Knowledge passes once, through the weights: the cross-entropy never reaches the
pretraining, and (with `finetune: linear`) the SSL features are frozen afterwards.
"""

from __future__ import annotations

from fkt.methods.base import Method


class SimCLR(Method):
    """Stage one: the contrastive loss alone (the classifier is not trained)."""

    name = "simclr"
    uses_ssl = True
    train_data = "pool"  # every training image, labelled or not; the labels are not used

    def losses(self, images, targets, pool=None):
        return {"ssl": self.ssl_term(images)[0]}

    def trainable(self):
        return [self.backbone, self.projector]

    def optimizer_settings(self):
        return self.cfg.optim.ssl
