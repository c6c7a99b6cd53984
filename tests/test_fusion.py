"""Loss fusion in the functional step (fkt.fusion): fixed, ramp, uncertainty, PCGrad.

Tiny runs: 16 px images, batches of 4, a few steps of a plain Trainer on generated tensors; and
one `train` (the engine, on a generated image folder) killed mid-epoch and rerun.
"""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from test_faults import position, same_weights
from test_methods import run_config

from fkt.config import Config, build_config, deep_merge
from fkt.engine import check_method, train
from fkt.errors import UserError
from fkt.fusion import FUSIONS, Uncertainty, build_fusion, check_fusion, pcgrad
from fkt.methods import Functional
from fkt.callbacks import step_seed
from fkt.objectives import weighted_total

BATCHES = 2  # a training epoch: 8 images, 4 a batch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tensors this small gain nothing from a second thread, and on a busy machine the threads' wait
    for each other made a step 6x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**method) -> Config:
    return build_config(deep_merge({
        "data": {"image_size": 16, "batch_size": 4},
        "model": {"proj_hidden_dim": 32, "proj_output_dim": 16},
        "trainer": {"accelerator": "cpu", "progress_bar": False},
    }, {"method": method}))


def images(n: int = 4 * BATCHES, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=gen), torch.arange(n) % 3


def module(config: Config, seed: int = 0) -> Functional:
    torch.manual_seed(seed)
    return Functional(config=config.to_dict(), num_classes=3)


class Recorder(Logger):
    """Keeps what Lightning writes, by step."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[int, dict[str, float]] = {}

    name = "recorder"
    version = 0

    def log_metrics(self, metrics, step):
        self.rows.setdefault(step, {}).update(metrics)

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def fit(config: Config, epochs: int, log_every: int = 2, callbacks=(), logger=None, ckpt_path=None, seed: int = 0,
        precision: str = "32-true"):
    m = module(config, seed)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, log_every_n_steps=log_every,
                         logger=logger or False, callbacks=list(callbacks), precision=precision,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(m, train_dataloaders=DataLoader(TensorDataset(*images()), batch_size=4), ckpt_path=ckpt_path)
    return m, trainer


def flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


# --------------------------------------------------------------------------- fixed and ramp

@pytest.mark.parametrize("lam", [1.0, 0.25, 0.3, 7.1])
def test_fixed_is_the_old_weighted_sum_bit_for_bit(lam):
    gen = torch.Generator().manual_seed(1)
    terms = {"ssl": torch.rand((), generator=gen) * 5, "ce": torch.rand((), generator=gen) * 3}
    old = weighted_total(terms, {"ce": lam})  # what Functional did before fusions were parts
    assert torch.equal(build_fusion(tiny(lambda_ce=lam).method)(terms, 3.0), old)
    assert torch.equal(module(tiny(lambda_ce=lam)).combine(terms), old)


def test_ramp_moves_lambda_linearly_from_start_to_lambda_ce_then_stays():
    ramp = build_fusion(tiny(fusion="ramp", lambda_start=0.2, lambda_ce=1.3, ramp_epochs=1.5).method)
    ce = [ramp.weights(epoch)["ce"] for epoch in (0.0, 0.375, 0.75, 1.125)]
    assert ce[0] == 0.2
    assert ce == pytest.approx([0.2, 0.475, 0.75, 1.025], abs=1e-12)  # equal steps for equal epochs
    assert [ramp.weights(epoch)["ce"] for epoch in (1.5, 1.6, 40.0)] == [1.3, 1.3, 1.3]
    assert all(ramp.weights(epoch)["ssl"] == 1.0 for epoch in (0.0, 1.0, 9.0))
    down = build_fusion(tiny(fusion="ramp", lambda_start=2.0, lambda_ce=0.0, ramp_epochs=2).method)
    assert [down.weights(e)["ce"] for e in (0, 1, 2, 3)] == [2.0, 1.0, 0.0, 0.0]


# --------------------------------------------------------------------------- uncertainty

def minimise(fusion: Uncertainty, terms: dict[str, torch.Tensor], steps: int, lr: float) -> None:
    optimizer = torch.optim.Adam(fusion.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        fusion(terms, 0.0).backward()
        optimizer.step()


def test_uncertainty_learns_the_inverse_of_each_loss():
    fusion = build_fusion(tiny(fusion="uncertainty").method)
    losses = {"ssl": 0.5, "ce": 3.0}
    minimise(fusion, {k: torch.tensor(v) for k, v in losses.items()}, steps=1500, lr=0.05)
    s = fusion.log_variances().detach()
    assert torch.exp(s).tolist() == pytest.approx([losses["ssl"], losses["ce"]], rel=1e-3)  # s_i = log L_i
    weights = fusion.weights(0.0)
    assert [float(weights[k]) for k in ("ssl", "ce")] == pytest.approx([1 / 0.5, 1 / 3.0], rel=1e-3)


def test_uncertainty_bounds_the_weight_of_a_loss_driven_to_zero():
    fusion = build_fusion(tiny(fusion="uncertainty").method)
    minimise(fusion, {"ssl": torch.tensor(1.0), "ce": torch.tensor(0.0)}, steps=1500, lr=0.5)
    s_ce = float(fusion.log_variances()[1].detach())
    assert -4.0 <= s_ce < -3.9  # at the bound: unbounded, s_ce = -lr * steps would be far below
    assert float(fusion.weights(0.0)["ce"]) <= math.exp(4.0)


# --------------------------------------------------------------------------- PCGrad

def test_pcgrad_projects_conflicting_gradients_off_each_others_original():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # g1.g2 = -1
    # g1 - (-1 / 2) g2 = (0.5, 0.5); g2 - (-1 / 1) g1 = (0, 1): against g1, not the projected g1
    assert torch.allclose(pcgrad(g1, g2), torch.tensor([0.5, 1.5]))
    assert torch.allclose(pcgrad(g2, g1), torch.tensor([0.5, 1.5]))
    a, b = torch.tensor([3.0, -1.0, 2.0]), torch.tensor([-1.0, 2.0, 0.0])  # a.b = -5, |a|^2 = 14, |b|^2 = 5
    assert torch.allclose(pcgrad(a, b), (a + b) + b + (5 / 14) * a)


def test_pcgrad_leaves_agreeing_or_orthogonal_gradients_as_the_plain_sum():
    for a, b in [([1.0, 0.0], [1.0, 1.0]), ([1.0, 0.0], [0.0, 2.0]), ([0.3, -0.7, 1.1], [0.0, 0.0, 0.0])]:
        a, b = torch.tensor(a), torch.tensor(b)
        assert torch.equal(pcgrad(a, b), a + b)


def pcgrad_by_hand(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    dot = torch.dot(g1, g2)
    if dot >= 0:
        return g1 + g2
    return g1 - dot / g2.square().sum() * g2 + g2 - dot / g1.square().sum() * g1


# a batch and views (seeds) on which the two terms' gradients conflict
@pytest.mark.parametrize("loss_scale, classifier_input, batch_seed, view_seed", [
    (1.0, "clean", 2, 8),
    (1024.0, "clean", 2, 8),  # as a GradScaler hands the loss to backward
    (1.0, "view", 1, 2),  # the two terms share the first view's features
])
def test_a_pcgrad_step_gives_the_backbone_the_projected_sum_and_each_head_its_own_gradient(
        loss_scale, classifier_input, batch_seed, view_seed):
    lam = 0.5
    m = module(tiny(fusion="pcgrad", lambda_ce=lam, classifier_input=classifier_input)).train()
    batch = images(4, seed=batch_seed)

    m.context.start(0, view_seed)  # the step's views
    loss = m.combine(m.losses(m.context, batch))
    m.backward(loss * loss_scale)
    got = {name: p.grad.clone() for name, p in m.named_parameters()}

    m.zero_grad()
    m.context.start(0, view_seed)
    terms = m.losses(m.context, batch)  # the same views, the same terms
    backbone = list(m.backbone.parameters())
    g_ssl = flat(torch.autograd.grad(terms["ssl"], backbone, retain_graph=True))
    g_ce = flat(torch.autograd.grad(lam * terms["ce"], backbone, retain_graph=True))
    assert torch.dot(g_ssl, g_ce) < 0  # these do conflict: the projection is what is tested
    want = pcgrad_by_hand(g_ssl.double(), g_ce.double()) * loss_scale  # float64: exact dot products
    backbone_grad = flat(got[f"backbone.{n}"] for n, _ in m.backbone.named_parameters()).double()
    assert (backbone_grad - want).norm() < 1e-5 * want.norm()  # in norm: the odd element cancels to ~0
    assert (backbone_grad - (g_ssl + g_ce).double() * loss_scale).norm() > 1e-3 * want.norm()  # not the plain sum
    heads = {"classifier": lam * terms["ce"], "ssl": terms["ssl"]}
    for head, term in heads.items():
        params = dict(getattr(m, head).named_parameters())
        own = torch.autograd.grad(term, list(params.values()), retain_graph=True)
        for (name, _), g in zip(params.items(), own):
            assert torch.allclose(got[f"{head}.{name}"], g * loss_scale, rtol=1e-5, atol=1e-7 * loss_scale), name


# --------------------------------------------------------------------------- logging

class IndependentCosine(pl.Callback):
    """Each step's SSL/CE gradient cosine on the backbone, recomputed apart (the same views, the same
    weights); the batch-norm statistics the extra forward moves are put back."""

    def __init__(self) -> None:
        self.cosines: dict[int, float] = {}
        self.computed: dict[int, bool] = {}

    def on_train_batch_start(self, trainer, m, batch, batch_idx):
        self.batch = batch

    def on_after_backward(self, trainer, m):  # before the module's own hook logs it
        self.computed[trainer.global_step] = m._grad_cosine is not None

    def on_before_optimizer_step(self, trainer, m, optimizer):
        saved = [b.clone() for b in m.buffers()]
        m.context.start(trainer.global_step, step_seed(m.cfg.seed, m.name, trainer.global_step, 0))
        with torch.enable_grad():
            terms = m.losses(m.context, self.batch)
            params = list(m.backbone.parameters())
            g = [flat(torch.autograd.grad(terms[k], params, retain_graph=True)) for k in ("ssl", "ce")]
        self.cosines[trainer.global_step] = F.cosine_similarity(g[0], g[1], dim=0).item()
        for b, s in zip(m.buffers(), saved):
            b.copy_(s)


def test_grad_cosine_and_weights_are_logged_on_log_steps_only_and_leave_training_alone():
    config = tiny(lambda_ce=0.5)
    spy, recorder = IndependentCosine(), Recorder()
    logged, _ = fit(config, epochs=2, log_every=2, callbacks=[spy], logger=recorder)
    assert spy.computed == {0: False, 1: True, 2: False, 3: True}
    cosine_steps = {step: row["fusion/grad_cosine"] for step, row in recorder.rows.items()
                    if "fusion/grad_cosine" in row}
    assert sorted(cosine_steps) == [1, 3]
    for step, value in cosine_steps.items():
        assert value == pytest.approx(spy.cosines[step], rel=1e-4, abs=1e-6)
        assert recorder.rows[step]["fusion/weight_ssl"] == 1.0 and recorder.rows[step]["fusion/weight_ce"] == 0.5

    # the extra gradients on log steps change nothing: the same weights as a run that never logs
    quiet, _ = fit(config, epochs=2, log_every=50, callbacks=[IndependentCosine()])
    for (key, a), b in zip(logged.state_dict().items(), quiet.state_dict().values()):
        assert torch.equal(a, b), key
    # method.grad_cosine false: log steps without the extra gradients (fkt bench, to time fkt alone)
    off, no_cosine = IndependentCosine(), Recorder()
    fit(tiny(lambda_ce=0.5, grad_cosine=False), epochs=2, log_every=2, callbacks=[off], logger=no_cosine)
    assert off.computed == {0: False, 1: False, 2: False, 3: False}
    assert not any("fusion/grad_cosine" in row for row in no_cosine.rows.values())
    assert any("fusion/weight_ce" in row for row in no_cosine.rows.values())


# --------------------------------------------------------------------------- runs

@pytest.mark.parametrize("fusion", sorted(FUSIONS))
def test_a_short_run_trains_with_every_fusion(fusion):
    config = build_config(deep_merge(tiny(fusion=fusion, lambda_start=0.2, lambda_ce=1.0, ramp_epochs=1.5).to_dict(),
                                     {"optim": {"schedule": "cosine", "warmup_epochs": 0.5}}))
    start = module(config).state_dict()
    recorder = Recorder()
    m, trainer = fit(config, epochs=2, log_every=1, logger=recorder)
    assert trainer.global_step == 2 * BATCHES
    rows = {step: row for step, row in recorder.rows.items() if "fusion/weight_ce" in row}
    assert sorted(rows) == [0, 1, 2, 3]
    for step, row in rows.items():
        assert math.isfinite(row["train/loss"]) and -1 <= row["fusion/grad_cosine"] <= 1
        if fusion == "ramp":  # lambda after step / 2 epochs of 1.5: 0.2, then a third of the way, ..., 1.0
            t = min(1.0, step / BATCHES / 1.5)
            assert row["fusion/weight_ce"] == pytest.approx(0.2 * (1 - t) + 1.0 * t, rel=1e-6)
        elif fusion == "uncertainty":
            assert math.exp(-4) <= row["fusion/weight_ce"] <= math.exp(4)
            assert (row["fusion/weight_ce"] == 1.0) == (step == 0)  # s_i = 0 at the start, then learned
        else:
            assert row["fusion/weight_ce"] == 1.0
    state = m.state_dict()
    assert ("fusion.raw" in state) == (fusion == "uncertainty")  # s_i are saved, and trained
    for key, value in start.items():
        if key.endswith(".weight") or key == "fusion.raw":
            assert not torch.equal(value, state[key]), key


class Killed(Exception):
    pass


def test_uncertainty_run_killed_mid_epoch_resumes_exactly(make_dataset, tmp_path, monkeypatch):
    """`fkt train` killed mid-epoch and rerun ends with the weights, s_i included, of a run never killed."""
    data = make_dataset("imagefolder", num_classes=3, train_per_class=8, test_per_class=3)

    def config(out):  # 4 steps an epoch, 2 epochs; last.ckpt every 2 steps
        config = run_config(data, out, "functional", data={"batch_size": 4},
                            trainer={"log_every_n_steps": 3, "checkpoint_every_n_steps": 2})
        config.method.fusion = "uncertainty"
        return config

    train(config(tmp_path / "whole"))
    start = Functional.on_train_batch_start

    def kill_at_step_7(self, batch, batch_idx):
        if self.global_step == 7:
            raise Killed
        start(self, batch, batch_idx)

    monkeypatch.setattr(Functional, "on_train_batch_start", kill_at_step_7)
    with pytest.raises(Killed):
        train(config(tmp_path / "killed"))
    monkeypatch.setattr(Functional, "on_train_batch_start", start)
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert position(last) == (1, 2)  # saved after step 6, mid-epoch
    assert torch.load(last, weights_only=False)["state_dict"]["fusion.raw"].abs().min() > 0

    train(config(tmp_path / "killed"))
    same_weights(tmp_path / "whole" / "checkpoints" / "last.ckpt", last)


# --------------------------------------------------------------------------- refusals

def test_pcgrad_on_two_devices_is_refused_in_one_line():
    two = build_config(deep_merge(tiny(fusion="pcgrad").to_dict(), {"trainer": {"devices": 2}}))
    with pytest.raises(UserError) as err:
        check_method(two)  # the world size as Lightning makes it of trainer.devices
    message = str(err.value)
    assert len(message.splitlines()) == 1 and "method.fusion" in message and "2 device" in message
    ddp = build_config(deep_merge(tiny(fusion="pcgrad").to_dict(), {"trainer": {"devices": 1, "strategy": "ddp"}}))
    with pytest.raises(UserError, match="trainer.strategy ddp"):
        check_method(ddp)
    with pytest.raises(UserError, match="3 device"):
        check_fusion(tiny(fusion="pcgrad"), world_size=3)
    check_method(tiny(fusion="pcgrad"))  # one CPU device
    for other in ("fixed", "ramp", "uncertainty"):
        check_method(build_config(deep_merge(tiny(fusion=other).to_dict(), {"trainer": {"devices": 2}})))
