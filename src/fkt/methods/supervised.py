"""Cross-entropy: the baseline, and the fine-tuning stage of representational transfer; with a
pseudo-label term on the pool (`method.pseudo_label`), FixMatch."""

from __future__ import annotations

from fkt.methods.base import Method


class Supervised(Method):
    name = "supervised"

    def losses(self, ctx, batch):
        *pool, images, targets = batch
        return {"ce": self.ce_term(ctx, images, targets), **self.pseudo_terms(ctx, pool)}

    def trainable(self):
        return [self.classifier] if self.freeze_backbone else [self.backbone, self.classifier]

    def optimizer_settings(self):
        return self.cfg.optim.supervised
