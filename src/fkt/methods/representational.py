"""Representational transfer: SSL pretraining, then supervised training from those weights.

Knowledge passes once, through the weights: the cross-entropy never reaches the
pretraining, and (with `finetune: linear`) the SSL features are frozen afterwards.
"""

from __future__ import annotations

from fkt.methods.base import Method


class Pretrain(Method):
    """Stage one: the SSL objective alone (the classifier is not trained)."""

    name = "pretrain"
    uses_ssl = True
    trains_classifier = False
    train_data = "pool"  # every training image, labelled or not; the labels are not used (but by supcon)

    def losses(self, ctx, batch):
        images, targets = batch
        return {"ssl": self.ssl(ctx, images, targets)[0]}

    def trainable(self):
        return [self.backbone, *self.ssl.trainable()]

    def optimizer_settings(self):
        return self.cfg.optim.ssl
