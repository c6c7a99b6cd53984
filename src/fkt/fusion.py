"""How the functional step fuses its SSL and cross-entropy terms (`method.fusion`).

One small part per rule. A part gives the loss the step optimises and the weight it puts on
each term; PCGrad also changes how the backbone's gradient is made from the two terms, which
`Functional.backward` does with `pcgrad` below. Every rule is a function of the global step
or of parameters in the state dict, so a resumed run goes on exactly as an uninterrupted one.
"""

from __future__ import annotations

import torch
from torch import nn

from fkt.config import Config, MethodConfig
from fkt.errors import UserError
from fkt.objectives import weighted_total
from fkt.step import StepContext

TERMS = ("ssl", "ce")


class Fusion(nn.Module):
    """`fixed`, the paper's rule and the default: L = L_ssl + lambda * L_ce."""

    name = "fixed"
    projects = False  # the backbone's gradient is PCGrad's, not the plain sum

    def __init__(self, config: MethodConfig) -> None:
        super().__init__()
        self.lambda_ce = config.lambda_ce

    def weights(self, epoch: float) -> dict[str, float | torch.Tensor]:
        """Each term's weight after `epoch` (fractional) epochs of training."""
        return {"ssl": 1.0, "ce": self.lambda_ce}

    def forward(self, terms: dict[str, torch.Tensor], epoch: float) -> torch.Tensor:
        return weighted_total(terms, self.weights(epoch))


class Ramp(Fusion):
    """lambda moves linearly from `lambda_start` to `lambda_ce` over `ramp_epochs`, then stays: the
    classifier's pull on the backbone can wait until the SSL term has shaped some features."""

    name = "ramp"

    def __init__(self, config: MethodConfig) -> None:
        super().__init__(config)
        self.lambda_start, self.ramp_epochs = config.lambda_start, config.ramp_epochs

    def weights(self, epoch: float) -> dict[str, float | torch.Tensor]:
        t = min(1.0, epoch / self.ramp_epochs)
        return {"ssl": 1.0, "ce": self.lambda_start * (1 - t) + self.lambda_ce * t}  # exact at both ends


class Uncertainty(Fusion):
    """Kendall, Gal & Cipolla (2018): L = sum_i exp(-s_i) L_i + s_i with learned s_i.

    dL/ds_i = 1 - exp(-s_i) L_i vanishes at s_i = log L_i, so each term ends up weighted by the
    inverse of its size (their public code had the sign of s_i wrong). A term driven to 0 would
    send s_i to -inf and its weight without limit, so s_i = 4 tanh(r_i / 4): the weights stay in
    [e^-4, e^4] ~ [0.018, 55], and unlike a clamp the gradient never stops at the bound. The s_i
    start at 0 (both weights 1) and are trained by the method's optimizer, with its weight decay;
    `lambda_ce` is not used, the learned weights replace it.
    """

    name = "uncertainty"
    bound = 4.0

    def __init__(self, config: MethodConfig) -> None:
        super().__init__(config)
        self.raw = nn.Parameter(torch.zeros(len(TERMS)))

    def log_variances(self) -> torch.Tensor:
        return self.bound * torch.tanh(self.raw / self.bound)

    def weights(self, epoch: float) -> dict[str, float | torch.Tensor]:
        return dict(zip(TERMS, torch.exp(-self.log_variances()).detach()))

    def forward(self, terms: dict[str, torch.Tensor], epoch: float) -> torch.Tensor:
        s = self.log_variances()
        return sum(torch.exp(-s[i]) * terms[name] + s[i] for i, name in enumerate(TERMS))


class PCGrad(Fusion):
    """Yu et al. (2020): the loss of `fixed`, but where the two terms' backbone gradients conflict,
    each is projected off the other before they are summed (see `pcgrad`)."""

    name = "pcgrad"
    projects = True


FUSIONS: dict[str, type[Fusion]] = {cls.name: cls for cls in (Fusion, Ramp, Uncertainty, PCGrad)}


def build_fusion(config: MethodConfig) -> Fusion:
    return FUSIONS[config.fusion](config)


def split_backward(fusion: Fusion, ctx: StepContext, loss: torch.Tensor, terms: dict[str, torch.Tensor],
                   heads: list[nn.Parameter], want_cosine: bool) -> tuple[bool, torch.Tensor | None]:
    """Each term's gradient on the backbone apart: for PCGrad, which then makes the backbone's
    gradient itself (True: the backward is done), and for the logged cosine between them.

    Two torch.autograd.grad calls that keep the graph. For PCGrad they replace the backbone's part
    of the backward, so its extra cost is a second backward only through what the terms share (the
    SSL view's features, with classifier_input view); the heads then get their own term's gradient
    from a backward that stops at them. For the cosine alone (the other fusions' log steps, 1 in
    trainer.log_every_n_steps) they come before the usual backward, which they leave untouched:
    about one extra backward there, and under DDP two all-reduces of a backbone-sized vector.
    """
    project = fusion.projects
    shared = [p for p in ctx.backbone.parameters() if p.requires_grad]
    outputs = [terms[k] for k in TERMS]
    # PCGrad weighs each term as the loss does, times any scale Lightning put on it (16-mixed)
    scales = torch.autograd.grad(loss, outputs, retain_graph=True) if project else None
    g_ssl, g_ce = term_gradients(outputs, shared, scales)
    if ctx.world_size > 1:  # (not pcgrad, refused there) the global batch's, as DDP's all-reduce makes them
        g_ssl, g_ce = (ctx.reduce_mean(g) for g in (g_ssl, g_ce))
    similarity = cosine(g_ssl, g_ce).detach() if want_cosine else None
    if not project:
        return False, similarity
    loss.backward(inputs=heads)  # the trained parameters outside the backbone
    add_gradient(shared, pcgrad(g_ssl, g_ce))
    return True, similarity


def pcgrad(g_ssl: torch.Tensor, g_ce: torch.Tensor) -> torch.Tensor:
    """Two-task PCGrad on flat gradients: where g_ssl . g_ce < 0, each g_i - (g_i . g_j / |g_j|^2) g_j,
    against the other's original gradient as in the paper, then the sum; else the plain sum.

    Without a branch (min(dot, 0) is 0 where they agree), so no wait for the GPU; and exactly the
    plain sum there."""
    conflict = torch.clamp(dot(g_ssl, g_ce), max=0)
    tiny = torch.finfo(g_ssl.dtype).tiny
    return ((g_ssl - conflict / dot(g_ce, g_ce).clamp_min(tiny) * g_ce)
            + (g_ce - conflict / dot(g_ssl, g_ssl).clamp_min(tiny) * g_ssl))


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch's cascaded sum: the BLAS dot (`a @ b`) of 11M float32 numbers (a ResNet-18's gradient) was
    off by 4e-4 of its value on a CPU, and PCGrad's projection carries that error."""
    return (a * b).sum()


def term_gradients(terms: list[torch.Tensor], params: list[nn.Parameter],
                   scales: tuple[torch.Tensor, ...] | None = None) -> list[torch.Tensor]:
    """Each term's gradient on `params` (times its scale), flat; the graph is kept for the backward after."""
    return [torch.cat([g.reshape(-1) for g in torch.autograd.grad(term, params, scale, retain_graph=True,
                                                                  materialize_grads=True)])
            for term, scale in zip(terms, scales or [None] * len(terms))]


def add_gradient(params: list[nn.Parameter], flat: torch.Tensor) -> None:
    """Add a flat gradient to the parameters' .grad, each in its parameter's memory format (channels_last
    weights: the optimizers' fused kernels want the gradient laid out as the weight is)."""
    for p, g in zip(params, torch.split(flat, [p.numel() for p in params])):
        if p.grad is None:
            p.grad = torch.empty_like(p).copy_(g.view_as(p))
        else:
            p.grad.add_(g.view_as(p))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """0 where a gradient is 0 (a term weighted 0 under pcgrad), rather than NaN in the logs."""
    return dot(a, b) / (a.norm() * b.norm()).clamp_min(torch.finfo(a.dtype).tiny)


def check_fusion(config: Config, world_size: int) -> None:
    """Raise UserError, in one line naming the field, where the configured fusion cannot run on
    `world_size` processes (call it before a run writes anything: engine.check_method).

    PCGrad writes the backbone's gradients by hand, past the hooks through which DDP (or any
    distributed strategy) all-reduces them, so it runs on one device only."""
    if config.method.name != "functional" or config.method.fusion != "pcgrad":
        return
    t = config.trainer
    if world_size > 1 or t.strategy not in ("auto", "single_device"):
        raise UserError(f"method.fusion pcgrad: runs on one device only (got {world_size} device(s), trainer.devices "
                        f"{t.devices}, trainer.strategy {t.strategy}): its hand-made gradients would bypass DDP's "
                        "all-reduce; use one device or another fusion")
