"""Functional transfer: L = L_ssl + lambda * L_ce in one step, on one shared backbone.

Against representational transfer the whole difference is here: both terms are made
in the same step, so both gradients shape the backbone at once. How the two are fused
(a fixed or ramped lambda, learned weights, PCGrad) is a part of its own, `fkt.fusion`.
"""

from __future__ import annotations

import torch

from fkt.fusion import TERMS, build_fusion, split_backward
from fkt.methods.base import Method


class Functional(Method):
    name = "functional"
    uses_ssl = True
    train_data = "joint"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fusion = build_fusion(self.cfg.method)
        self._terms: dict[str, torch.Tensor] | None = None  # this step's, for backward
        self._grad_cosine: torch.Tensor | None = None

    def losses(self, ctx, batch):
        *pool, images, targets = batch
        if pool:  # some training images are unlabelled: the SSL term's own batch of every image
            return {"ssl": self.ssl(ctx, pool[0])[0], "ce": self.ce_term(ctx, images, targets),
                    **self.pseudo_terms(ctx, pool)}
        ssl, view_features = self.ssl(ctx, images, targets)
        return {"ssl": ssl, "ce": self.ce_term(ctx, images, targets, view_features)}

    def combine(self, terms):
        # the rules fuse the SSL term with the supervised side (cross-entropy, and pseudo-labels where added)
        terms = {"ssl": terms["ssl"], "ce": self.supervised_loss(terms)}
        self._terms = terms  # backward takes them apart again
        epoch = self.context.epoch
        if self.log_step:
            weights = self.fusion.weights(epoch)
            self.log_dict({f"fusion/weight_{k}": float(weights[k]) for k in TERMS}, on_step=True, on_epoch=False)
        return self.fusion(terms, epoch)

    def backward(self, loss, *args, **kwargs):
        """PCGrad's backbone gradient and, on log steps, the cosine between the terms' gradients
        need each term's backbone gradient apart (`fkt.fusion.split_backward`)."""
        terms, self._terms = self._terms, None  # hold no graph past this step
        done = False
        cosine = self.log_step and self.cfg.method.grad_cosine
        if self.fusion.projects or cosine:
            in_backbone = {id(p) for p in self.backbone.parameters()}
            heads = [p for p in self.trainable_parameters() if p.requires_grad and id(p) not in in_backbone]
            done, self._grad_cosine = split_backward(self.fusion, self.context, loss, terms, heads, cosine)
        if not done:
            super().backward(loss, *args, **kwargs)

    def on_after_backward(self):
        if self._grad_cosine is not None:  # logged here: Lightning takes no logs from backward
            self.log("fusion/grad_cosine", self._grad_cosine, on_step=True, on_epoch=False)
            self._grad_cosine = None

    @property
    def log_step(self) -> bool:
        """A step Lightning writes logs on (it tests its batches-stepped count + 1, the global step + 1 here)."""
        return self._trainer is not None and (self.global_step + 1) % self.trainer.log_every_n_steps == 0

    def trainable(self):
        return [self.backbone, *self.ssl.trainable(), self.classifier, self.fusion]

    def optimizer_settings(self):
        return getattr(self.cfg.optim, self.cfg.optim.functional)
