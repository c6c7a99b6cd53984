"""Functional transfer: L = L_ssl + lambda * L_ce in one step, one backward, one shared backbone.

Against representational transfer the whole difference is here: both terms are made
in the same step, so both gradients shape the backbone at once.
"""

from __future__ import annotations

from fkt.methods.base import Method


class Functional(Method):
    name = "functional"
    uses_ssl = True
    train_data = "joint"

    @property
    def loss_weights(self):
        return {"ce": self.cfg.method.lambda_ce}

    def losses(self, images, targets, pool=None):
        # `pool`: where some training images are unlabelled, the SSL term's own batch of every image
        ssl, view_features = self.ssl_term(images if pool is None else pool)
        return {"ssl": ssl, "ce": self.ce_term(images, targets, view_features if pool is None else None)}

    def trainable(self):
        return [self.backbone, *self.ssl.trainable(), self.classifier]

    def optimizer_settings(self):
        return getattr(self.cfg.optim, self.cfg.optim.functional)
