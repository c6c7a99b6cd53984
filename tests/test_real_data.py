"""Each method on a small real Fashion-MNIST slice (the Debian package), end to end."""

from __future__ import annotations

import json

import pytest

from fkt.config import build_config
from fkt.data.fashion_mnist import locate
from fkt.engine import train
from fkt.evaluate import evaluate_checkpoint

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(locate(None) is None, reason="needs apt-get install dataset-fashion-mnist"),
]


@pytest.mark.parametrize("method", ["supervised", "representational", "functional"])
def test_method_learns_on_real_fashion_mnist_and_reloads(tmp_path, method):
    config = build_config({
        "method": {"name": method},
        "data": {"dataset": "fashion-mnist", "limit_train": 640, "val_fraction": 0.01, "batch_size": 32},
        "optim": {"ssl": {"name": "adamw", "lr": 0.002}, "supervised": {"name": "adamw", "lr": 0.002}},
        "trainer": {"epochs": 2, "pretrain_epochs": 1, "accelerator": "cpu", "progress_bar": False},
        "out": str(tmp_path / method),
    })
    results = train(config)
    assert results["test"]["n"] == 10_000  # the whole test set
    assert results["val"]["n"] == 600
    # Ten balanced classes: chance is 10%. 640 images for two epochs is far above it.
    assert results["test"]["accuracy"] > 0.4, results["test"]["accuracy"]
    assert results["probes"]["knn"] > 0.4, results["probes"]  # the frozen backbone's k-NN, every run
    per_image = {"supervised": 1 * 2, "representational": 2 * 1 + 1 * 2, "functional": 3 * 2}[method]
    assert results["compute"]["image_passes"] == 640 * per_image

    again = evaluate_checkpoint(tmp_path / method / "checkpoints" / "best.ckpt", "fashion-mnist", None, None)
    saved = json.loads((tmp_path / method / "metrics.json").read_text())
    assert again["test"]["accuracy"] == saved["test"]["accuracy"]
    assert again["test"]["confusion_matrix"] == saved["test"]["confusion_matrix"]


@pytest.mark.parametrize("method", ["supervised", "functional"])
def test_pseudo_label_arms_learn_from_10_labels_a_class_on_real_fashion_mnist(tmp_path, method):
    """FixMatch (supervised + the term) and its joint form on a real slice: 100 labelled images, a pool of
    640, 2 pool epochs; they learn, and their pseudo-labels are mostly right once confident."""
    config = build_config({
        "method": {"name": method, "pseudo_label": "fixmatch", "pl_threshold": 0.8, "classifier_input": "weak"},
        "data": {"dataset": "fashion-mnist", "limit_train": 640, "val_fraction": 0.01, "labels_per_class": 10,
                 "val_labels_per_class": 10, "labelled_batch_size": 16, "pool_batch_ratio": 2},
        "optim": {"ssl": {"name": "adamw", "lr": 0.002}, "supervised": {"name": "adamw", "lr": 0.002}},
        "trainer": {"epochs": 2, "accelerator": "cpu", "progress_bar": False, "log_every_n_steps": 5},
        "out": str(tmp_path / method),
    })
    results = train(config)
    assert results["val"]["n"] == 100 and results["images"] == {"labelled": 100, "unlabelled": 540}
    assert results["test"]["accuracy"] > 0.3, results["test"]["accuracy"]  # chance: 10%
    steps = 2 * (640 // 32)
    assert results["compute"]["passes_by_term"]["pl"] == steps * 2 * 32
    with open(tmp_path / method / "logs" / "train" / "metrics.csv") as handle:
        import csv

        accuracy = [float(r["pseudo/accuracy_epoch"]) for r in csv.DictReader(handle) if r.get("pseudo/accuracy_epoch")]
    assert accuracy and accuracy[-1] > 0.5, accuracy
