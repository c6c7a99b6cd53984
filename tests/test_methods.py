"""The three methods: optimizers, where gradients go, stages, and checkpoints that reload."""

from __future__ import annotations

import json

import pytest
import torch
from lightly.utils.lars import LARS

from fkt.config import Config, build_config, deep_merge
from fkt.engine import train
from fkt.evaluate import evaluate_checkpoint
from fkt.methods import Functional, Pretrain, Supervised, load_module, stages


def tiny_config(**sections) -> Config:
    base = {
        "data": {"image_size": 32, "batch_size": 8},
        "model": {"backbone": "resnet18"},
        "trainer": {"accelerator": "cpu", "progress_bar": False, "epochs": 1, "pretrain_epochs": 1},
    }
    return build_config(deep_merge(base, sections))


def batch(n: int = 8, classes: int = 3, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    return images, torch.arange(n) % classes


def module(cls, config: Config | None = None, **kwargs):
    config = config or tiny_config()
    return cls(config=config.to_dict(), num_classes=3, **kwargs)


def backbone_grad_norm(m) -> float:
    return sum(p.grad.abs().sum().item() for p in m.backbone.parameters() if p.grad is not None)


def test_functional_cross_entropy_gradient_reaches_backbone():
    m = module(Functional).train()
    images, targets = batch()
    terms = m.losses(m.context, (images, targets))
    assert set(terms) == {"ssl", "ce"}
    terms["ce"].backward()
    assert backbone_grad_norm(m) > 0
    assert m.classifier.weight.grad is not None and m.classifier.weight.grad.abs().sum() > 0


def test_functional_total_is_ssl_plus_lambda_ce():
    config = tiny_config(method={"lambda_ce": 0.25})
    m = module(Functional, config)
    terms = {"ssl": torch.tensor(2.0), "ce": torch.tensor(4.0)}
    assert m.combine(terms).item() == pytest.approx(2.0 + 0.25 * 4.0)
    with_pseudo = module(Functional, tiny_config(method={"lambda_ce": 0.25, "pl_weight": 0.5},
                                                 data={"labels_per_class": 1}))
    total = with_pseudo.combine({**terms, "pl": torch.tensor(8.0)})  # lambda on the whole supervised side
    assert total.item() == pytest.approx(2.0 + 0.25 * (4.0 + 0.5 * 8.0))


def test_simclr_pretraining_has_no_cross_entropy_and_leaves_classifier_alone():
    m = module(Pretrain).train()
    images, targets = batch()
    terms = m.losses(m.context, (images, targets))
    assert set(terms) == {"ssl"}
    terms["ssl"].backward()
    assert backbone_grad_norm(m) > 0
    assert m.classifier.weight.grad is None
    trained = {id(p) for mod in m.trainable() for p in mod.parameters()}
    assert not any(id(p) in trained for p in m.classifier.parameters())


@pytest.mark.parametrize(
    "cls, kwargs, optim, expected_type, lr",
    [
        (Supervised, {}, {}, torch.optim.SGD, 0.025),
        (Pretrain, {}, {}, LARS, 0.001),
        (Functional, {}, {}, torch.optim.SGD, 0.025),
        (Functional, {}, {"functional": "ssl"}, LARS, 0.001),
    ],
)
def test_optimizers_as_the_paper_states(cls, kwargs, optim, expected_type, lr):
    m = module(cls, tiny_config(optim=optim), **kwargs)
    optimizer = m.configure_optimizers()
    assert type(optimizer) is expected_type
    assert optimizer.param_groups[0]["lr"] == lr
    params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    expected = {id(p) for mod in m.trainable() for p in mod.parameters()}
    assert params == expected
    assert all(id(p) in params for p in m.backbone.parameters())


@pytest.mark.parametrize("rule, world, expected", [("none", 4, 0.025), ("linear", 4, 0.1), ("sqrt", 4, 0.05),
                                                   ("linear", 1, 0.025)])
def test_lr_follows_the_global_batch_when_asked(rule, world, expected):
    config = tiny_config(data={"batch_size": 64}, optim={"lr_scaling": rule, "reference_batch": 64})
    m = module(Supervised, config)
    m.context.world_size = world  # as setup() sets it under DDP: 4 ranks x 64 = a global batch of 256
    assert m.configure_optimizers().param_groups[0]["lr"] == pytest.approx(expected)


def test_linear_finetune_trains_only_the_classifier_and_keeps_batchnorm_frozen():
    m = module(Supervised, freeze_backbone=True)
    optimizer = m.configure_optimizers()
    params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert params == {id(p) for p in m.classifier.parameters()}
    m.train()
    assert not m.backbone.training and m.classifier.training


def test_stages_per_method():
    assert [s.module for s in stages(tiny_config(method={"name": "supervised"}))] == [Supervised]
    assert [s.module for s in stages(tiny_config(method={"name": "functional"}))] == [Functional]
    rep = stages(tiny_config(method={"name": "representational", "finetune": "linear"},
                             trainer={"epochs": 3, "pretrain_epochs": 2}))
    assert [(s.name, s.module, s.epochs) for s in rep] == [("pretrain", Pretrain, 2), ("finetune", Supervised, 3)]
    assert rep[1].init_from == "pretrain" and rep[1].freeze_backbone


@pytest.mark.parametrize("classifier_input, passes", [("clean", 3), ("weak", 3), ("view", 2)])
def test_image_passes_per_step(classifier_input, passes):
    m = module(Functional, tiny_config(method={"classifier_input": classifier_input})).train()
    images, targets = batch(8)
    m.losses(m.context, (images, targets))
    assert m.image_passes == passes * 8


def run_config(generated, out, method, dataset="imagefolder", **extra) -> Config:
    sections = {
        "method": {"name": method},
        "data": {"dataset": dataset, "root": str(generated.root), "image_size": 32, "batch_size": 8,
                 "val_fraction": 0.25, "num_workers": 0},
        "trainer": {"epochs": 2, "pretrain_epochs": 1},
        "out": str(out),
    }
    return tiny_config(**deep_merge(sections, extra))


@pytest.mark.parametrize("method", ["supervised", "representational", "functional"])
def test_each_method_trains_and_its_checkpoint_reloads_to_the_same_metrics(make_dataset, tmp_path, method):
    data = make_dataset("imagefolder", num_classes=3, train_per_class=8, test_per_class=3)
    out = tmp_path / "run"
    results = train(run_config(data, out, method))

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["method"] == method and saved["dataset"] == "imagefolder" and saved["seed"] == 0
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro"):
        assert 0.0 <= saved["test"][key] <= 1.0
    assert saved["test"]["n"] == 9  # the whole test set, no dropped batch
    assert saved["compute"]["image_passes"] == results["compute"]["image_passes"] > 0
    for name in ("config.yaml", "split.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt",
                 "logs/" + ("finetune" if method == "representational" else "train") + "/metrics.csv"):
        assert (out / name).is_file(), name

    again = evaluate_checkpoint(out / "checkpoints" / "best.ckpt", None, None, None)
    assert again["test"]["accuracy"] == saved["test"]["accuracy"]
    assert again["test"]["confusion_matrix"] == saved["test"]["confusion_matrix"]


def test_image_passes_count_every_backbone_input(make_dataset, tmp_path):
    data = make_dataset("imagefolder", num_classes=3, train_per_class=8, test_per_class=2)
    results = train(run_config(data, tmp_path / "f", "functional"))
    n_train = json.loads((tmp_path / "f" / "split.json").read_text())["counts"]["train"]
    steps_per_epoch = n_train // 8
    assert results["compute"]["image_passes"] == 2 * steps_per_epoch * 8 * 3  # 2 epochs, 2 views + clean

    rep = train(run_config(data, tmp_path / "r", "representational"))
    stages_ = rep["compute"]["stages"]
    assert stages_["pretrain"]["image_passes"] == 1 * steps_per_epoch * 8 * 2
    assert stages_["finetune"]["image_passes"] == 2 * steps_per_epoch * 8 * 1
    assert rep["compute"]["epochs"] == 3


def test_finetuning_starts_from_the_pretrained_backbone(make_dataset, tmp_path, monkeypatch):
    data = make_dataset("imagefolder", num_classes=3, train_per_class=8, test_per_class=2)
    seen = {}

    def record(self):
        seen.setdefault("start", {k: v.clone() for k, v in self.backbone.state_dict().items()})

    monkeypatch.setattr(Supervised, "on_fit_start", record, raising=False)
    out = tmp_path / "rep"
    train(run_config(data, out, "representational"))
    pretrained = load_module(out / "checkpoints" / "pretrain" / "last.ckpt")
    fresh = Supervised(config=pretrained.cfg.to_dict(), num_classes=3)
    for key, value in pretrained.backbone.state_dict().items():
        assert torch.equal(seen["start"][key], value), key
    assert any(not torch.equal(v, fresh.backbone.state_dict()[k])
               for k, v in pretrained.backbone.state_dict().items() if v.is_floating_point())


@pytest.mark.slow
@pytest.mark.parametrize(
    "layout, kwargs",
    [
        ("fashion-mnist", {"num_classes": 3, "train_per_class": 8, "test_per_class": 2}),
        ("cifar10", {"num_classes": 3, "train_per_class": 8, "test_per_class": 2}),
        ("intel-image", {"train_per_class": 4, "test_per_class": 1, "image_size": 40}),
        ("aptos2019", {"images_per_class": 8}),
        ("imagefolder", {"num_classes": 3, "train_per_class": 8, "test_per_class": None}),
    ],
)
def test_train_runs_on_every_dataset_layout(make_dataset, tmp_path, layout, kwargs):
    data = make_dataset(layout, **kwargs)
    config = run_config(data, tmp_path / layout, "functional", dataset=layout)
    results = train(config)
    split = json.loads((tmp_path / layout / "split.json").read_text())
    carved = layout in ("aptos2019", "imagefolder")
    assert ("test" in split["indices"]) == carved
    assert results["test"]["n"] == (split["counts"]["test"] if carved else len(data.test_labels))
    assert ("qwk" in results["test"]) == (layout == "aptos2019")
    assert results["classes"] == data.classes
