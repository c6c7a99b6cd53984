"""Every SSL objective (fkt.ssl): each loss against its paper's formula written out here, the
teachers' momentum rule after a real step, training and reloading in both methods, where the
cross-entropy's gradient goes, exact resume of a teacher and a queue, and the settings refused.

The formula tests drive each objective through the step context every training step uses
(`fkt.step.StepContext`), with fixed tensors for views and one linear layer for a backbone, so the
expected value is computed from the same heads by the plain formula, and a wiring mistake (the
wrong view to the teacher, a missing stop-gradient, an unsymmetrised loss) changes the number.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

from conftest import one_error_line, write_idx
from test_objectives import nt_xent_reference

from fkt.checkpointing import STOP, ResumeState
from fkt.config import build_config, deep_merge
from fkt.engine import train
from fkt.evaluate import evaluate_checkpoint
from fkt.methods import Functional, Method, Pretrain, load_module
from fkt.ssl import OBJECTIVES, MomentumObjective
from fkt.ssl.moco import MoCo
from fkt.ssl.supcon import supcon_loss
from fkt.step import StepContext

NEW = ["byol", "simsiam", "barlowtwins", "vicreg", "dino", "moco", "nnclr", "supcon"]


def config(**sections):
    base = {"data": {"image_size": 16, "batch_size": 8},
            "trainer": {"accelerator": "cpu", "progress_bar": False, "epochs": 1, "pretrain_epochs": 1}}
    return build_config(deep_merge(base, sections))


# --------------------------------------------------------------------------- the losses, by formula

class FixedViews:
    """The views a step draws, given in order."""

    def __init__(self, views):
        self.queue = list(views)

    def __call__(self, images, generator=None):
        return self.queue.pop(0)


def stand_in(views, feat_dim=16):
    """A step context with fixed views and a linear backbone, outside a Trainer (so a teacher's
    schedule has one step, momentum 1: the teacher stays where the test put it)."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(views[0][0].numel(), feat_dim))
    return StepContext(backbone, image_size=views[0].shape[-1], views=FixedViews(views))


def bench(name, n=6, **sections):
    gen = torch.Generator().manual_seed(7)
    v1 = torch.randn(n, 3, 4, 4, generator=gen)
    v2 = v1 + 0.3 * torch.randn(n, 3, 4, 4, generator=gen)  # two correlated views
    ctx = stand_in([v1, v2])
    torch.manual_seed(1)
    objective = OBJECTIVES[name](ctx.backbone, 16, config(method={"ssl": name}, **sections)).train()
    if isinstance(objective, MomentumObjective):  # a teacher apart from its student, as after training a while
        with torch.no_grad():
            for p in [*objective.teacher_backbone.parameters(), *objective.teacher_heads.parameters()]:
                p.add_(0.1 * torch.randn_like(p))
    return objective, ctx, v1, v2


def neg_cos(a, b):
    """-mean_i <a_i, b_i> / (|a_i| |b_i|), written out."""
    return -((a * b).sum(1) / (a.pow(2).sum(1).sqrt() * b.pow(2).sum(1).sqrt())).mean()


def teacher_out(objective, v, head="projector"):
    with torch.no_grad():
        return objective.teacher_heads[head](objective.teacher_backbone(v))


def test_byol_is_the_symmetric_negative_cosine_of_prediction_and_the_teachers_other_view():
    objective, ctx, v1, v2 = bench("byol")
    loss, h1 = objective(ctx, v1)
    f = ctx.backbone
    p1, p2 = (objective.predictor(objective.projector(f(v))) for v in (v1, v2))
    z1, z2 = teacher_out(objective, v1), teacher_out(objective, v2)
    assert loss.item() == pytest.approx(0.5 * (neg_cos(p1, z2) + neg_cos(p2, z1)).item(), rel=1e-5)
    assert loss.item() != pytest.approx(0.5 * (neg_cos(p1, z1) + neg_cos(p2, z2)).item(), rel=1e-3)
    torch.testing.assert_close(h1, f(v1))  # the first view's student features, for the cross-entropy
    loss.backward()
    assert all(p.grad is None for p in objective.teacher_backbone.parameters())


def test_simsiam_is_the_symmetric_negative_cosine_with_a_stop_gradient_on_the_target():
    objective, ctx, v1, v2 = bench("simsiam")
    loss, _ = objective(ctx, v1)
    f, proj, pred = ctx.backbone, objective.projector, objective.predictor
    z1, z2 = proj(f(v1)), proj(f(v2))
    expected = 0.5 * (neg_cos(pred(z1), z2.detach()) + neg_cos(pred(z2), z1.detach()))
    no_stop = 0.5 * (neg_cos(pred(z1), z2) + neg_cos(pred(z2), z1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    weight = proj.layers[0].weight
    (got,) = torch.autograd.grad(loss, weight)
    torch.testing.assert_close(got, torch.autograd.grad(expected, weight, retain_graph=True)[0], rtol=1e-4, atol=1e-7)
    assert not torch.allclose(got, torch.autograd.grad(no_stop, weight)[0], rtol=1e-2, atol=1e-6)


def standardised(z, eps=1e-5):
    """Each dimension to mean 0 and (biased) std 1 over the batch, as the authors' BatchNorm1d."""
    return (z - z.mean(0)) / (z.var(0, unbiased=False) + eps).sqrt()


def test_barlow_twins_is_the_cross_correlation_pushed_to_the_identity():
    objective, ctx, v1, v2 = bench("barlowtwins")
    loss, _ = objective(ctx, v1)
    za, zb = (objective.projector(ctx.backbone(v)).double() for v in (v1, v2))
    c = standardised(za).T @ standardised(zb) / len(za)
    on = ((1 - torch.diagonal(c)) ** 2).sum()
    off = (c ** 2).sum() - (torch.diagonal(c) ** 2).sum()
    assert objective.lambda_offdiag == 5e-3
    assert loss.item() == pytest.approx((on + 5e-3 * off).item(), rel=1e-4)
    assert loss.item() != pytest.approx((on + off).item(), rel=1e-3)


def test_vicreg_is_invariance_variance_and_covariance_weighted_25_25_1():
    objective, ctx, v1, v2 = bench("vicreg")
    loss, _ = objective(ctx, v1)
    za, zb = (objective.projector(ctx.backbone(v)).double() for v in (v1, v2))
    n, d = za.shape
    invariance = ((za - zb) ** 2).sum() / (n * d)

    def variance(z):  # hinge on each dimension's std at 1
        return F.relu(1 - (z.var(0, unbiased=True) + 1e-4).sqrt()).mean()

    def covariance(z):  # off-diagonal squared covariances over d
        centred = z - z.mean(0)
        cov = centred.T @ centred / (n - 1)
        return ((cov ** 2).sum() - (torch.diagonal(cov) ** 2).sum()) / d

    expected = 25 * invariance + 25 * 0.5 * (variance(za) + variance(zb)) + 1 * (covariance(za) + covariance(zb))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert variance(za) > 0 and covariance(za) > 0  # all three terms are exercised


def test_dino_is_the_cross_entropy_to_the_centred_sharpened_teacher_of_the_other_view():
    objective, ctx, v1, v2 = bench("dino")
    center = torch.randn(1, 1, objective.out_dim, generator=torch.Generator().manual_seed(3))
    objective.loss.center.copy_(center)
    loss, _ = objective(ctx, v1)
    f = ctx.backbone
    s1, s2 = (objective.projector(f(v)) for v in (v1, v2))
    t1, t2 = teacher_out(objective, v1), teacher_out(objective, v2)

    def h(t, s):  # H(P_t, P_s), the teacher centred and at 0.04, the student at 0.1
        p_t = F.softmax((t - center[0]) / 0.04, dim=1)
        return -(p_t * F.log_softmax(s / 0.1, dim=1)).sum(1).mean()

    assert loss.item() == pytest.approx(0.5 * (h(t1, s2) + h(t2, s1)).item(), rel=1e-5)
    # the centre moved by its momentum towards the mean teacher output of both views
    torch.testing.assert_close(objective.loss.center[0], 0.9 * center[0] + 0.1 * torch.cat([t1, t2]).mean(0),
                               rtol=1e-5, atol=1e-6)
    # a uniform student's value is its chance level, ln(out_dim), whatever the teacher
    assert h(t1, torch.zeros_like(s1)).item() == pytest.approx(objective.chance(6), rel=1e-5)


def test_moco_is_info_nce_against_the_teachers_key_and_the_queue(monkeypatch):
    monkeypatch.setattr(MoCo, "queue", 16)
    objective, ctx, v1, v2 = bench("moco")
    queue = objective.loss.memory_bank.bank.clone()  # (size, dim), normalised random keys at first
    assert queue.shape == (16, objective.projector.layers[-1].out_features)
    loss, _ = objective(ctx, v1)
    q = F.normalize(objective.projector(ctx.backbone(v1)), dim=1)
    k = F.normalize(teacher_out(objective, v2), dim=1)
    expected = 0.0
    for i in range(len(q)):  # -log( exp(q.k+/t) / (exp(q.k+/t) + sum_queue exp(q.n/t)) )
        logits = torch.cat([(q[i] @ k[i]).view(1), queue @ q[i]]) / 0.1
        expected += (torch.logsumexp(logits, 0) - logits[0]) / len(q)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # the keys were enqueued (normalised) where the pointer was, and the pointer moved on
    torch.testing.assert_close(objective.loss.memory_bank.bank[:6], k, rtol=1e-5, atol=1e-6)
    assert int(objective.loss.memory_bank.bank_ptr) == 6
    assert objective.chance(8) == pytest.approx(math.log(17))


def test_nnclr_contrasts_each_views_nearest_neighbour_with_the_other_views_prediction():
    objective, ctx, v1, v2 = bench("nnclr")
    bank = objective.bank.bank.clone()  # (size, dim)
    loss, _ = objective(ctx, v1)
    z1, z2 = (objective.projector(ctx.backbone(v)) for v in (v1, v2))
    p1, p2 = objective.predictor(z1), objective.predictor(z2)

    def nearest(z):
        return bank[(F.normalize(z, dim=1) @ F.normalize(bank, dim=1).T).argmax(1)]

    expected = 0.5 * (nt_xent_reference(nearest(z1), p2, 0.1) + nt_xent_reference(nearest(z2), p1, 0.1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert int(objective.bank.bank_ptr) == 6  # the second view's projections went into the bank


def supcon_eq2(z, labels, t):
    """Khosla et al. 2020, eq. 2 (L^sup_out), summed over anchors as in the paper, by loops:
    L = sum_i -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p/t) / sum_{a in A(i)} exp(z_i.z_a/t) )."""
    z = (z / z.norm(dim=1, keepdim=True)).double()
    total = 0.0
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        denominator = sum(math.exp(float(z[i] @ z[a]) / t) for a in others)
        positives = [p for p in others if labels[p] == labels[i]]
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / t) / denominator) for p in positives) / len(positives)
    return total


@pytest.mark.parametrize("labels", [[0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 1, 2], [3, 3, 3, 3, 3, 3], [0, 1, 2, 3, 4, 5]])
def test_supcon_loss_is_eq_2_averaged_over_anchors(labels):
    gen = torch.Generator().manual_seed(len(set(labels)))
    z = torch.randn(12, 5, generator=gen)
    both = torch.tensor(labels).repeat(2)  # two views of six images
    got = supcon_loss(z, both, 0.1)
    assert got.item() == pytest.approx(supcon_eq2(z, both.tolist(), 0.1) / 12, rel=1e-5)
    if len(set(labels)) == 6:  # every image its own class: SupCon is SimCLR's NT-Xent
        assert got.item() == pytest.approx(nt_xent_reference(z[:6], z[6:], 0.1).item(), rel=1e-5)


def test_supcon_loss_by_hand():
    """Four unit vectors: two of class 0 at 0 and 90 degrees, class 1 at 180 and 270. For the
    first, the positive has cosine 0, the others -1 and 0: loss ln(1 + e^-1/t + 1) = ln(2 + e^-1/t)."""
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    t = 0.5
    each = math.log(2 + math.exp(-1 / t))  # the same for every anchor by symmetry
    assert supcon_loss(z, labels, t).item() == pytest.approx(each, rel=1e-6)
    assert supcon_loss(3 * z, labels, t).item() == pytest.approx(each, rel=1e-6)  # cosine, not dot product


def test_supcon_objective_uses_the_labels_of_both_views():
    objective, ctx, v1, v2 = bench("supcon")
    targets = torch.tensor([0, 1, 0, 1, 2, 2])
    loss, _ = objective(ctx, v1, targets)
    z = torch.cat([objective.projector(ctx.backbone(v)) for v in (v1, v2)])
    assert loss.item() == pytest.approx(supcon_eq2(z.detach(), targets.repeat(2).tolist(), 0.1) / 12, rel=1e-5)
    with pytest.raises(RuntimeError, match="no labels"):
        objective(stand_in([v1, v2]), v1)


@pytest.mark.parametrize("name", NEW)
def test_every_objective_names_its_projector_and_declares_floor_and_chance(name):
    objective, *_ = bench(name)
    assert isinstance(objective.projector, nn.Module)  # Grad-CAM of a pretraining checkpoint reads it
    assert objective.floor == (-1.0 if name in ("byol", "simsiam") else 0.0)
    chance = objective.chance(8)
    assert chance is None if name in ("byol", "simsiam", "barlowtwins", "vicreg") else chance > 0


def test_losses_gather_across_ranks_under_ddp():
    for name in ("barlowtwins", "vicreg", "nnclr", "moco", "supcon"):
        objective, *_ = bench(name)
        objective.distributed(2)
        flags = {"barlowtwins": lambda o: o.loss.gather_distributed, "vicreg": lambda o: o.loss.gather_distributed,
                 "nnclr": lambda o: o.loss.gather_distributed and o.bank.gather_distributed,
                 "moco": lambda o: o.loss.memory_bank.gather_distributed, "supcon": lambda o: o.gather}
        assert flags[name](objective), name
        objective.distributed(1)
        assert not flags[name](objective), name


# --------------------------------------------------------------------------- where the cross-entropy goes

@pytest.mark.parametrize("name", NEW)
def test_cross_entropy_reaches_the_backbone_jointly_and_the_ssl_term_never_the_classifier(name):
    """With the classifier on the SSL view, the cross-entropy goes through the features the
    objective returns: they must be the student's, with their graph (not a teacher's, not detached)."""
    m = Functional(config=config(method={"ssl": name, "classifier_input": "view"}).to_dict(), num_classes=3).train()
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    terms = m.losses(m.context, (x, torch.arange(6) % 3))
    assert set(terms) == {"ssl", "ce"} and m.context.passes == {"ssl": 6 if name == "moco" else 12}
    assert torch.autograd.grad(terms["ssl"], m.classifier.weight, allow_unused=True, retain_graph=True) == (None,)
    terms["ce"].backward()
    assert sum(p.grad.abs().sum().item() for p in m.backbone.parameters() if p.grad is not None) > 0
    assert m.classifier.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- whole runs

def run_config(root, out, kind, name, dataset="imagefolder", **extra):
    sections = {"method": {"name": kind, "ssl": name},
                "data": {"dataset": dataset, "root": str(root), "val_fraction": 0.25, "num_workers": 0},
                "evaluate": {"probes": []}, "out": str(out)}
    return config(**deep_merge(sections, extra))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from conftest import make_imagefolder

    return make_imagefolder(tmp_path_factory.mktemp("folder"), num_classes=3, train_per_class=8, test_per_class=2)


def logged(csv, column):
    import csv as _csv

    return [float(r[column]) for r in _csv.DictReader(csv.open()) if r.get(column)]


def watch_teacher(monkeypatch):
    """Snapshots student and teacher as pretraining's second step starts, and the teacher and its
    gradients as it ends (hooks of the module, so the engine's own run is watched)."""
    seen = {}

    def teacher(m):
        return [*m.ssl.teacher_backbone.parameters(), *m.ssl.teacher_heads["projector"].parameters()]

    def start(self, batch, batch_idx):
        Method.on_train_batch_start(self, batch, batch_idx)
        if batch_idx == 1:
            student = [*self.backbone.parameters(), *self.ssl.projector.parameters()]
            seen["student"] = [p.detach().clone() for p in student]
            seen["teacher"] = [p.detach().clone() for p in teacher(self)]

    def end(self, outputs, batch, batch_idx):
        Method.on_train_batch_end(self, outputs, batch, batch_idx)
        if batch_idx == 1:
            seen["after"] = [p.detach().clone() for p in teacher(self)]
            seen["frozen"] = all(not p.requires_grad and p.grad is None for p in teacher(self))
            seen["total"] = int(self.trainer.estimated_stepping_batches)

    monkeypatch.setattr(Pretrain, "on_train_batch_start", start)
    monkeypatch.setattr(Pretrain, "on_train_batch_end", end)
    return seen


@pytest.mark.parametrize("name", NEW)
def test_every_objective_pretrains_then_finetunes(folder, tmp_path, monkeypatch, name):
    teacher = issubclass(OBJECTIVES[name], MomentumObjective)
    seen = watch_teacher(monkeypatch) if teacher else {}
    out = tmp_path / "run"
    # 18 training images, batch 6: 3 pretraining steps; a linear finetune, the same for every objective
    results = train(run_config(folder.root, out, "representational", name, data={"batch_size": 6},
                               method={"finetune": "linear"}, trainer={"log_every_n_steps": 1}))
    losses = logged(out / "logs" / "pretrain" / "metrics.csv", "train/ssl")
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert set(results["compute"]["stages"]["pretrain"]["passes_by_term"]) == {"ssl"}  # no cross-entropy

    # the checkpoint rebuilds the objective with every tensor it saved (teacher, queue, centre)
    checkpoint = out / "checkpoints" / "pretrain" / "last.ckpt"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    reloaded = load_module(checkpoint)
    assert reloaded.ssl.name == name and reloaded.state_dict().keys() == saved.keys()
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, saved[key]), key
    stateful = {"moco": "ssl.loss.memory_bank.bank", "nnclr": "ssl.bank.bank", "dino": "ssl.loss.center"}
    assert name not in stateful or stateful[name] in saved
    assert teacher == any(k.startswith("ssl.teacher_backbone.") for k in saved)
    # pretraining trained the backbone and left the classifier as it was made (same seed, same start)
    pl.seed_everything(0, verbose=False)
    fresh = Pretrain(config=reloaded.cfg.to_dict(), num_classes=3)
    assert torch.equal(fresh.classifier.weight, reloaded.classifier.weight)
    assert not torch.equal(fresh.backbone.conv1.weight, reloaded.backbone.conv1.weight)

    if teacher:  # no gradient, and teacher' = m * teacher + (1 - m) * student after a real step
        assert seen["frozen"] and seen["total"] == 3
        start = OBJECTIVES[name].momentum_start  # to 1 on a cosine over steps 0..T-1 (lightly's cosine_schedule)
        m = 1 - (1 - start) * (math.cos(math.pi * 1 / (3 - 1)) + 1) / 2
        assert reloaded.ssl.momentum(1, 3) == pytest.approx(m) and m < 1
        moved = 0
        for t, s_, after in zip(seen["teacher"], seen["student"], seen["after"], strict=True):
            torch.testing.assert_close(after, m * t + (1 - m) * s_, rtol=1e-6, atol=1e-7)
            moved += not torch.equal(after, t)
        assert moved > 0  # the student had moved in the first step, so the teacher did


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """A stratified slice of the real Fashion-MNIST (the Debian package) written as IDX files,
    4 classes x (12 training + 5 test) images; generated images in the same layout without it."""
    from conftest import make_fashion_mnist
    from fkt.data.fashion_mnist import FILES, find_file, locate, read_idx

    root = tmp_path_factory.mktemp("fashion")
    source = locate(None)
    if source is None:
        return make_fashion_mnist(root, num_classes=4, train_per_class=12, test_per_class=5, image_size=16).root
    for split, per_class in (("train", 12), ("test", 5)):
        images_file, labels_file = FILES[split]
        pixels, labels = read_idx(find_file(source, images_file)), read_idx(find_file(source, labels_file))
        keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(4)]))
        write_idx(root / images_file, pixels[keep])
        write_idx(root / labels_file, labels[keep])
    return root


def joint_config(root, out, name):
    # 48 training images, 40 after validation's 8: 4 steps of 10
    return run_config(root, out, "functional", name, dataset="fashion-mnist",
                      data={"val_fraction": 0.125, "batch_size": 10})


@pytest.fixture(scope="module")
def joint(fashion, tmp_path_factory):
    """`joint(name)`: (run directory, results) of one functional run of `name` on the slice, made
    once for the module (the resume test compares against the same run)."""
    runs = {}

    def run(name):
        if name not in runs:
            out = tmp_path_factory.mktemp(f"joint_{name}") / "run"
            runs[name] = out, train(joint_config(fashion, out, name))
        return runs[name]

    return run


@pytest.mark.parametrize("name", NEW)
def test_every_objective_trains_jointly_on_fashion_mnist_and_reloads(joint, name):
    """Real images through every objective, and a best.ckpt that evaluates to the same metrics again.
    A run only finishes with finite terms (the engine stops at the first NaN or inf, naming it); one
    epoch is too short to ask for accuracy (the batch-norm statistics are still near their start)."""
    out, results = joint(name)
    assert results["test"]["n"] == 20 and results["images"]["labelled"] == 40
    assert results["compute"]["stages"]["train"]["passes_by_term"]["ssl"] == (1 if name == "moco" else 2) * 40
    again = evaluate_checkpoint(out / "checkpoints" / "best.ckpt", None, None, None)
    assert again["test"]["accuracy"] == results["test"]["accuracy"]
    assert again["test"]["confusion_matrix"] == results["test"]["confusion_matrix"]


def stop_at(step):
    """Make the run stop (as after Ctrl-C: saving last.ckpt) at the end of training step `step`."""
    real = ResumeState._wish

    def wish(self, trainer):
        return STOP if trainer.global_step == step else real(self, trainer)

    return wish


@pytest.mark.parametrize("name", ["byol", "moco"])
def test_a_run_stopped_mid_epoch_resumes_to_the_same_weights_teacher_and_queue(fashion, joint, tmp_path,
                                                                               monkeypatch, name):
    """The teacher moves at the start of a step, not after it: a mid-epoch checkpoint is saved by a
    callback before the module's on_train_batch_end, and a move there would be lost on resume."""
    from fkt.checkpointing import Interrupted

    whole, _ = joint(name)
    out = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        patch.setattr(ResumeState, "_wish", stop_at(2))  # in the middle of the one epoch's 4 steps
        with pytest.raises(Interrupted):
            train(joint_config(fashion, out, name))
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 2 and not (out / "metrics.json").exists()
    results = train(joint_config(fashion, out, name))
    assert results["compute"]["stages"]["train"]["resumed"] is True
    a = torch.load(whole / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    b = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    assert any(k.startswith("ssl.teacher_backbone.") for k in a)
    assert name != "moco" or "ssl.loss.memory_bank.bank" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --------------------------------------------------------------------------- settings refused

def cli_args(data, out, *extra):
    return ["train", "--method", "functional", "--dataset", "imagefolder", "--data-root", str(data.root),
            "--image-size", "16", "--batch-size", "4", "--epochs", "1", "--accelerator", "cpu",
            "--num-workers", "0", "--no-progress", "--out", str(out), *extra]


@pytest.mark.parametrize("extra, needles", [
    (["--ssl", "supcon", "--labels-per-class", "2"], ["data.labels_per_class", "supcon"]),
    (["--ssl", "supcon", "--method", "representational", "--set", "data.labelled_fraction=0.5"],
     ["data.labelled_fraction", "supcon"]),
    (["--ssl", "barlowtwins", "--batch-size", "1"], ["data.batch_size=1", "barlowtwins", "at least 2"]),
    (["--ssl", "vicreg", "--batch-size", "1"], ["data.batch_size=1", "vicreg", "at least 2"]),
], ids=["supcon few labels", "supcon labelled fraction", "barlowtwins batch 1", "vicreg batch 1"])
def test_settings_an_objective_cannot_run_with_are_one_line_and_write_nothing(folder, tmp_path, fkt_cli, extra,
                                                                              needles):
    out = tmp_path / "run"
    one_error_line(fkt_cli(*cli_args(folder, out, *extra)), *needles, code=2)
    assert not out.exists()


def test_supcon_with_labels_withheld_is_fine_for_supervised_runs():
    from fkt.ssl import check_objective

    check_objective(config(method={"name": "supervised", "ssl": "supcon"}, data={"labels_per_class": 2}))


def test_an_unknown_objective_lists_the_choices(folder, tmp_path, fkt_cli):
    out = tmp_path / "run"
    result = fkt_cli(*cli_args(folder, out, "--ssl", "foo"))
    assert result.returncode == 2 and "--ssl" in result.stderr and "invalid choice: 'foo'" in result.stderr
    assert all(name in result.stderr for name in OBJECTIVES)
    assert not out.exists()
