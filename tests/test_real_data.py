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
