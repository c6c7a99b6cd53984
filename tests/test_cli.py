"""The `fkt` command as a user meets it: one-line errors, non-zero exits, and a real run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import one_error_line


def fkt(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fkt", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.mark.parametrize(
    "args, needles",
    [
        (["train", "--dataset", "nope", "--out", "OUT"], ["--dataset nope", "unknown dataset", "fashion-mnist"]),
        (["train", "--method", "magic", "--out", "OUT"], ["--method", "magic"]),
        (["train", "--bogus-flag", "--out", "OUT"], ["--bogus-flag"]),
        (["train", "--epochs", "ten", "--out", "OUT"], ["--epochs", "ten"]),
        (["train", "--epochs", "0", "--out", "OUT"], ["trainer.epochs", "greater than 0"]),
        (["train", "--set", "optim.supervised.learning_rate=0.1", "--out", "OUT"],
         ["optim.supervised.learning_rate", "unknown key"]),
        (["train", "--set", "data.batch_size=big", "--out", "OUT"], ["data.batch_size", "big"]),
        (["train", "--dataset", "cifar10", "--data-root", "MISSING", "--out", "OUT"], ["--data-root", "MISSING"]),
        (["train", "--dataset", "intel-image", "--data-root", ".", "--out", "OUT"], ["seg_train"]),
        (["train", "--config", "no-such-preset", "--out", "OUT"], ["no-such-preset"]),
        (["evaluate", "--checkpoint", "missing.ckpt"], ["missing.ckpt", "no such file"]),
        (["frobnicate"], ["frobnicate"]),
    ],
)
@pytest.mark.no_training  # each is refused before training
def test_user_mistakes_get_one_clear_line(tmp_path, fkt_cli, args, needles):
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    one_error_line(fkt_cli(*args, cwd=tmp_path), *needles)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_the_entry_point_gives_one_line_too():
    """The real `python -m fkt`, in a subprocess: a mistake argparse finds is one line and exit 2."""
    one_error_line(fkt("frobnicate"), "frobnicate", code=2)


@pytest.mark.slow  # it trains nothing, but its interpreter imports Lightning: seconds
def test_the_entry_point_gives_one_line_for_a_user_error(tmp_path):
    """The real `python -m fkt`, in a subprocess: a mistake fkt finds (its UserError) is one line and exit 2."""
    bad = tmp_path / "model.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    one_error_line(fkt("evaluate", "--checkpoint", str(bad)), str(bad), "checkpoint", code=2)


def test_datasets_lists_every_layout(fkt_cli):
    result = fkt_cli("datasets")
    assert result.returncode == 0
    for name in ("fashion-mnist", "cifar10", "intel-image", "aptos2019", "imagefolder"):
        assert name in result.stdout


def test_train_then_evaluate_from_the_command_line(make_dataset, tmp_path, fkt_cli):
    """In this process (the entry point itself is the two tests above): evaluate agrees with train."""
    data = make_dataset("imagefolder", num_classes=3, train_per_class=8, test_per_class=3)
    out = tmp_path / "run"
    result = fkt_cli("train", "--method", "functional", "--dataset", "imagefolder", "--data-root", str(data.root),
                     "--image-size", "32", "--batch-size", "8", "--epochs", "1", "--accelerator", "cpu",
                     "--set", "data.val_fraction=0.25", "--no-progress", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test accuracy" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    evaluated = fkt_cli("evaluate", "--checkpoint", str(out / "checkpoints" / "best.ckpt"), "--out", str(tmp_path))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads(evaluated.stdout)["test"]["accuracy"] == metrics["test"]["accuracy"]
    assert json.loads((tmp_path / "eval.json").read_text())["test"]["f1_macro"] == metrics["test"]["f1_macro"]
