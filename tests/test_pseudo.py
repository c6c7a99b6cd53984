"""Pseudo-labels as a term any arm adds: FixMatch's loss against its formula, its counted passes, the
weights' moving average, and compute matched exactly across the arms of a real grid (the composed
arms train in tests/test_few_labels.py, with poisoned labels, and resume in tests/test_faults.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import make_fashion_mnist
from torch.nn import functional as F

from fkt.compute import count_step
from fkt.config import build_config
from fkt.engine import train
from fkt.methods import Functional, Supervised
from fkt.pseudo import fixmatch_loss, pseudo_label_accuracy
from fkt.reproduce import arm_method, cells, run_grid


def test_the_fixmatch_term_is_the_masked_cross_entropy_of_the_formula():
    weak = torch.tensor([[4.0, 0.0, 0.0], [1.0, 1.1, 0.9], [0.0, 0.0, 5.0], [0.0, 3.0, 0.0]])
    strong = torch.tensor([[0.5, 0.2, 0.1], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.3, 0.3, 0.3]], requires_grad=True)
    loss, mask, targets = fixmatch_loss(weak, strong, threshold=0.9)
    probs = weak.softmax(-1)
    assert mask.tolist() == [1.0, 0.0, 1.0, 1.0]  # 0.96, 0.37, 0.99, 0.91 against 0.9
    assert probs.max(-1).values[3] >= 0.9 > probs.max(-1).values[1]
    assert targets.tolist() == [0, 1, 2, 1]
    by_hand = sum(-torch.log_softmax(strong[i], -1)[t] for i, t in ((0, 0), (2, 2), (3, 1))) / 4  # mean over all 4
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    loss.backward()
    assert strong.grad[1].abs().sum() == 0  # a masked-out image gives no gradient
    everything, mask_all, _ = fixmatch_loss(weak, strong.detach(), threshold=1e-6)
    assert mask_all.sum() == 4 and everything.item() == pytest.approx(
        F.cross_entropy(strong.detach(), targets).item(), rel=1e-6)


def test_pseudo_label_accuracy_counts_confident_images_of_known_class_and_out_of_task_ones_as_wrong():
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0])
    targets = torch.tensor([0, 1, 2, 2, 1])
    truth = torch.tensor([0, 2, 2, 2, -1])  # right, wrong, right, (not confident), unknown
    assert pseudo_label_accuracy(mask, targets, truth).item() == pytest.approx(2 / 3)
    assert pseudo_label_accuracy(mask, targets, torch.tensor([-2, 1, 2, 2, -1])).item() == pytest.approx(2 / 3)
    assert pseudo_label_accuracy(torch.zeros(5), targets, truth) is None


def few(method: str, **extra) -> object:
    sections = {"method": {"name": method, "pseudo_label": "fixmatch", **extra.pop("method", {})},
                "data": {"labels_per_class": 2, "batch_size": 6, "labelled_batch_size": 3, "image_size": 16,
                         **extra.pop("data", {})},
                "model": {"proj_hidden_dim": 16}, **extra}
    return build_config(sections)


@pytest.mark.parametrize("module, ssl", [(Supervised, 0), (Functional, 2 * 6)])
def test_every_pool_forward_is_counted_as_a_pass_of_the_pseudo_label_term(module, ssl):
    counted = count_step(module, few(module.name), num_classes=3)
    assert counted.passes == {**({"ssl": ssl} if ssl else {}), "ce": 3, "pl": 2 * 6}  # the weak view too


def test_the_pool_batch_ratio_sets_the_pool_batch_from_the_labelled_one():
    config = few("supervised", data={"pool_batch_ratio": 7, "labelled_batch_size": None, "batch_size": 4})
    assert (config.data.labelled_batch, config.data.batch_size) == (4, 28)
    assert count_step(Supervised, config, num_classes=3).passes == {"ce": 4, "pl": 56}
    assert build_config(config.to_dict()).data.batch_size == 28  # saved and read back: the same batches


@pytest.mark.parametrize("arm, method", [("fixmatch", {"name": "supervised", "pseudo_label": "fixmatch"}),
                                         ("functional+fixmatch", {"name": "functional", "pseudo_label": "fixmatch"}),
                                         ("supervised-matched", {"name": "supervised", "pseudo_label": "none"}),
                                         ("functional", {"name": "functional"})])
def test_grid_arms_name_the_method_and_its_pseudo_label_term(arm, method):
    assert arm_method(arm) == method


@pytest.mark.parametrize("settings, needle", [
    ({"method": {"pseudo_label": "fixmatch"}}, "method.pseudo_label=fixmatch needs unlabelled images"),
    ({"method": {"pl_threshold": 1.5}}, "method.pl_threshold: Input should be less than or equal to 1 (got 1.5)"),
    ({"method": {"pl_threshold": 0}}, "method.pl_threshold: Input should be greater than 0 (got 0)"),
    ({"data": {"pool_batch_ratio": 0.5}}, "data.pool_batch_ratio: Input should be greater than or equal to 1 (got 0.5)"),
    ({"method": {"ema_decay": 1.0}}, "method.ema_decay: Input should be less than 1 (got 1.0)"),
])
def test_bad_pseudo_label_settings_are_one_line_naming_the_field(settings, needle, fkt_cli, tmp_path):
    import yaml

    preset = tmp_path / "bad.yaml"
    preset.write_text(yaml.safe_dump(settings))
    result = fkt_cli("train", "--config", str(preset), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and needle in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return make_fashion_mnist(tmp_path_factory.mktemp("fm"), num_classes=4, train_per_class=20, test_per_class=5,
                              gz=False)


def run_config(root, out, **sections) -> object:
    data = {"dataset": "fashion-mnist", "root": str(root), "image_size": 16, "batch_size": 8, "val_fraction": 0.1,
            "num_workers": 0, "labels_per_class": 3, "labelled_batch_size": 4, **sections.pop("data", {})}
    return build_config({"method": {"pseudo_label": "fixmatch", "pl_threshold": 0.3, **sections.pop("method", {})},
                         "data": data, "model": {"proj_hidden_dim": 16},
                         "trainer": {"accelerator": "cpu", "progress_bar": False, "epochs": 1, "pretrain_epochs": 1,
                                     "log_every_n_steps": 1, **sections.pop("trainer", {})},
                         "out": str(out), **sections})


@pytest.mark.slow
def test_the_moving_average_is_what_is_evaluated_and_saved(fmnist, tmp_path):
    ema = train(run_config(fmnist.root, tmp_path / "ema", method={"name": "supervised", "ema_decay": 0.5}))
    assert ema["ema_decay"] == 0.5
    last = torch.load(tmp_path / "ema" / "checkpoints" / "last.ckpt", weights_only=False)
    best = torch.load(tmp_path / "ema" / "checkpoints" / "best.ckpt", weights_only=False)
    assert "current_model_state" in last  # the trained weights, for resuming; state_dict holds the average
    key = "classifier.weight"
    assert not torch.equal(last["state_dict"][key], last["current_model_state"][key])
    assert torch.equal(best["state_dict"][key], last["state_dict"][key])  # one epoch: best is the end's average


@pytest.mark.slow
def test_a_grid_of_pseudo_label_arms_matches_every_arm_to_the_functional_passes_exactly(fmnist, tmp_path):
    """Pool 72 images, 8 a step (9 steps an epoch), 4 labelled: functional 2x8+4 = 20 passes a step,
    fixmatch 4+2x8 = 20, functional+fixmatch 36, supervised 4. One functional epoch, 180 passes:
    functional+fixmatch trains 5/9 of an epoch (5 steps), supervised-matched 5 epochs."""
    config = run_config(fmnist.root, tmp_path, method={"pseudo_label": "none"}, grid={
        "methods": ["supervised-matched", "fixmatch", "functional", "functional+fixmatch", "representational"],
        "seeds": [0]})
    planned = {c.arm: c for c in cells(config, tmp_path / "grid")}
    assert planned["functional+fixmatch"].trainer.epochs == pytest.approx(5 / 9, abs=1e-4)
    assert (planned["supervised-matched"].trainer.epochs, planned["fixmatch"].trainer.epochs) == (5, 1)
    assert (planned["representational"].trainer.pretrain_epochs, planned["representational"].trainer.epochs) == (1, 1)
    run_grid(config, tmp_path / "grid")
    passes = {}
    for run_dir in (tmp_path / "grid" / "runs").iterdir():
        metrics = json.loads((run_dir / "metrics.json").read_text())
        passes[metrics["arm"]] = metrics["compute"]["image_passes"]
    assert passes == dict.fromkeys(planned, 180)
    assert (tmp_path / "grid" / "figures" / "fashion-mnist-pseudo-labels.png").stat().st_size > 10_000
    report = (tmp_path / "grid" / "results.md").read_text()
    assert "functional+fixmatch" in report and "fixmatch" in (tmp_path / "grid" / "report.md").read_text()
    assert math.isclose(json.loads((tmp_path / "grid" / "runs" / next(
        d.name for d in (tmp_path / "grid" / "runs").iterdir() if "functional+fixmatch" in d.name) / "metrics.json"
    ).read_text())["compute"]["stages"]["train"]["steps"], 5)
