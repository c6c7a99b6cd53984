"""Probes of a frozen backbone: k-NN and linear accuracy with known answers, and on real checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_imagefolder

from fkt import cli, probes
from fkt.config import Config
from fkt.data.module import FKTDataModule
from fkt.methods import Supervised
from fkt.probes import backbone_features, knn_accuracy, linear_probe_accuracy, probe_accuracies


def clusters(n_per_class: int, spread: float, noise_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well separated Gaussian clusters (the same centres whatever the noise seed)."""
    centers = torch.randn(3, 8, generator=torch.Generator().manual_seed(0)) * 4
    labels = torch.arange(3).repeat_interleave(n_per_class)
    noise = torch.randn(len(labels), 8, generator=torch.Generator().manual_seed(noise_seed + 1))
    return centers[labels] + spread * noise, labels


def test_knn_on_separated_clusters_is_perfect_and_k_beyond_the_bank_works():
    x, y = clusters(10, 0.3)
    test_x, test_y = clusters(5, 0.3, noise_seed=1)
    assert knn_accuracy(x, y, test_x, test_y, 3) == 1.0
    assert knn_accuracy(x, y, test_x, (test_y + 1) % 3, 3) == 0.0
    assert knn_accuracy(x, y, x, y, 3, k=500) == pytest.approx(1.0)  # k clamped to the 30 training points


def test_knn_weights_votes_by_similarity():
    """k=3: two far neighbours of class 0 lose to one near neighbour of class 1 at a low temperature,
    and win at a high one (plain majority)."""
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # class 1 along x, class 0 along y
    labels = torch.tensor([1, 0, 0])
    query = torch.tensor([[1.0, 0.3]])  # cosine 0.958 to the class-1 point, 0.287 to the class-0 points
    assert knn_accuracy(train, labels, query, torch.tensor([1]), 2, k=3, temperature=0.07) == 1.0
    assert knn_accuracy(train, labels, query, torch.tensor([0]), 2, k=3, temperature=100.0) == 1.0
    # k=1 is the nearest neighbour, whatever the temperature
    assert knn_accuracy(train, labels, query, torch.tensor([1]), 2, k=1, temperature=100.0) == 1.0


def test_knn_is_cosine_not_euclidean():
    train = torch.tensor([[10.0, 0.0], [0.1, 0.1]])
    labels = torch.tensor([0, 1])
    # nearer to [0.1, 0.1] in distance, but pointing along [10, 0]
    assert knn_accuracy(train, labels, torch.tensor([[1.0, 0.05]]), torch.tensor([0]), 2, k=1) == 1.0


def test_linear_probe_separable_and_random_labels():
    x, y = clusters(30, 0.5)
    assert linear_probe_accuracy(x, y, x, y) == 1.0
    g = torch.Generator().manual_seed(3)
    noise_x = torch.randn(600, 8, generator=g)
    train_y, test_y = torch.randint(0, 3, (300,), generator=g), torch.randint(0, 3, (300,), generator=g)
    assert abs(linear_probe_accuracy(noise_x[:300], train_y, noise_x[300:], test_y) - 1 / 3) < 0.1


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("probes")
    return make_imagefolder(root / "data", num_classes=3, train_per_class=12, test_per_class=4, image_size=16)


def data_module(folder) -> FKTDataModule:
    config = Config.model_validate({"data": {"dataset": "imagefolder", "root": str(folder.root), "image_size": 32,
                                             "val_fraction": 0.25, "batch_size": 4, "eval_batch_size": 5}})
    data = FKTDataModule(config)
    data.setup()
    return data


@pytest.mark.parametrize("size", [128, pytest.param(512, marks=pytest.mark.resnet18)],
                         ids=["resnet-tiny", "resnet18"])
def test_features_come_in_order_with_their_labels(folder, size):
    data = data_module(folder)
    module = Supervised(config=data.config.to_dict(), num_classes=3)
    x, y = backbone_features(module, data.loader("test"))
    assert x.shape == (12, size) and x.dtype == torch.float32  # the backbone's own feature size
    assert y.tolist() == folder.test_labels
    single = module.features(module.normalize(data.sets["test"][7][0][None]))
    assert torch.allclose(x[7], single[0], atol=1e-5)


def test_a_random_backbone_separates_colour_classes_and_features_are_extracted_once(folder, monkeypatch):
    """Classes differ in colour only: even random features are far above chance."""
    data = data_module(folder)
    torch.manual_seed(0)
    module = Supervised(config=data.config.to_dict(), num_classes=3)
    calls = []
    original = probes.backbone_features
    monkeypatch.setattr(probes, "backbone_features", lambda *a: calls.append(1) or original(*a))
    result = probe_accuracies(module, data, ["knn", "linear"])
    assert set(result) == {"knn", "linear"} and len(calls) == 2  # train and test, once each
    assert result["knn"] > 0.9 and result["linear"] > 0.9
    assert probe_accuracies(module, data, []) == {}


def test_every_run_and_the_pretraining_stage_get_probed(folder, tmp_path, fkt_cli):
    out = tmp_path / "run"
    assert cli.main(["train", "--method", "representational", "--dataset", "imagefolder", "--data-root",
                     str(folder.root), "--image-size", "32", "--epochs", "1", "--pretrain-epochs", "1",
                     "--batch-size", "8", "--accelerator", "cpu", "--no-progress", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["probes"]["knn"] <= 1
    result = fkt_cli("evaluate", "--checkpoint", str(out / "checkpoints" / "pretrain" / "last.ckpt"),
                     "--probe", "knn", "--probe", "linear")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout[result.stdout.index("{"):])
    assert "test" not in shown and set(shown["probes"]) == {"knn", "linear"}
    assert "never trained" in result.stdout
