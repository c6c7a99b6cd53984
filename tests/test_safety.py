"""Files from elsewhere are data: a crafted checkpoint runs nothing. Files fkt writes are shared
like any tool's (umask). Every odd CLI value is one line. ECE on hand-made probabilities."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest
import torch
from conftest import make_fashion_mnist, make_imagefolder, one_error_line

from fkt import cli
from fkt.checkpointing import read_checkpoint
from fkt.config import Config
from fkt.evaluate import classification_metrics
from fkt.io import atomic_write_text


class Payload:
    """Unpickling this runs `touch <marker>`: what a crafted checkpoint can do to a full unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A representational run (pretraining stage + fine-tuned best) and a functional one with a
    mid-epoch last.ckpt, on an image folder."""
    root = tmp_path_factory.mktemp("safety")
    data = make_imagefolder(root / "data", num_classes=3, train_per_class=8, test_per_class=2)
    common = ["--dataset", "imagefolder", "--data-root", str(data.root), "--image-size", "32", "--epochs", "1",
              "--pretrain-epochs", "1", "--batch-size", "4", "--accelerator", "cpu", "--no-progress",
              "--set", "evaluate.probes=[]"]
    for method in ("representational", "functional"):
        extra = ["--checkpoint-every-n-steps", "1", "--set", "optim.schedule=cosine"] if method == "functional" else []
        assert cli.main(["train", "--method", method, *common, *extra, "--out", str(root / method)]) == 0
    return {"data": data.root, "pretrain": root / "representational" / "checkpoints" / "pretrain" / "last.ckpt",
            "finetuned": root / "representational" / "checkpoints" / "best.ckpt",
            "functional": root / "functional" / "checkpoints" / "best.ckpt",
            "mid_epoch": root / "functional" / "checkpoints" / "last.ckpt", "common": common}


def crafted(real: Path, path: Path, marker: Path) -> Path:
    """A real fkt checkpoint with one extra entry whose unpickling runs a shell command."""
    state = torch.load(real, map_location="cpu", weights_only=True)
    state["fkt"]["note"] = Payload(marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def test_every_checkpoint_fkt_writes_loads_as_data(runs):
    for kind in ("pretrain", "finetuned", "functional", "mid_epoch"):
        state = read_checkpoint(runs[kind])
        assert state["fkt"]["module"] in ("pretrain", "supervised", "functional"), kind


@pytest.mark.parametrize("command", ["evaluate", "predict", "export", "cam", "resume"])
def test_a_crafted_checkpoint_is_refused_and_runs_nothing(runs, tmp_path, fkt_cli, command):
    marker = tmp_path / "pwned"
    bad = crafted(runs["functional"], tmp_path / "run" / "checkpoints" / "last.ckpt", marker)
    args = {
        "evaluate": ["evaluate", "--checkpoint", str(bad)],
        "predict": ["predict", "--checkpoint", str(bad), str(runs["data"] / "test")],
        "export": ["export", "--checkpoint", str(bad), "--format", "torchscript", "--out", str(tmp_path / "x")],
        "cam": ["cam", "--checkpoint", str(bad), "--out", str(tmp_path / "cam.png")],
        "resume": ["train", "--method", "functional", *runs["common"], "--out", str(tmp_path / "run")],
    }[command]
    one_error_line(fkt_cli(*args), str(bad), "refused", "--trust-checkpoint", code=2)
    assert not marker.exists()
    assert not (tmp_path / "x").exists() and not (tmp_path / "cam.png").exists()


def test_the_crafted_checkpoint_does_run_code_when_trusted(runs, tmp_path, fkt_cli):
    """The control: the payload is real, so its absence above means fkt refused it."""
    marker = tmp_path / "pwned"
    bad = crafted(runs["functional"], tmp_path / "evil.ckpt", marker)
    fkt_cli("evaluate", "--checkpoint", str(bad), "--trust-checkpoint")
    assert marker.exists()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "metrics.json", "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == mode


def test_a_run_directory_is_readable_by_colleagues(runs):
    run = runs["functional"].parents[1]
    old = os.umask(0o022)
    os.umask(old)
    expected = 0o666 & ~old
    for name in ("metrics.json", "config.yaml", "split.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert stat.S_IMODE((run / name).stat().st_mode) == expected, name


ODD_VALUES = ["[1", "{a: 1", "'x' * 3", "é☃", "null", "[]", "{}", "-1", "0", "1e309", "nan", "true", "3.5",
              "- a", ":", "!!python/object/apply:os.system ['touch PWNED']", "&a [*a]", "*a", "`x", "@x", "%x",
              "1" * 300, "'", '"', "x: [", "\t"]


def config_keys(model=Config, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        if hasattr(field.annotation, "model_fields"):
            keys += config_keys(field.annotation, f"{prefix}{name}.")
    return keys


@pytest.mark.no_training  # each is refused before training
def test_random_set_values_are_each_one_clear_line(tmp_path, fkt_cli):
    """60 random `--set key=value` over every config key and odd values (malformed YAML, wrong types,
    out of range, unicode): each ends in one line and exit 2, never a traceback. A missing data root
    stops every run that survives the config, so nothing trains."""
    keys = [k for k in config_keys() if k not in ("data.root", "out", "data.dataset", "data")] + [
        "nope", "data.nope", "data.batch_size.x", "seed.x", "."]
    rng = random.Random(0)
    for _ in range(60):
        item = f"{rng.choice(keys)}={rng.choice(ODD_VALUES)}"
        result = fkt_cli("train", "--dataset", "cifar10", "--data-root", str(tmp_path / "missing"), "--set", item,
                         "--out", str(tmp_path / "run"), cwd=tmp_path)
        one_error_line(result, code=2)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("item, needle", [("data.batch_size=[1", "not valid YAML"),
                                          ("optim.schedule='x' * 3", "not valid YAML"),
                                          ("=3", "no key")])
@pytest.mark.no_training  # refused before training
def test_malformed_set_values_name_the_item(tmp_path, fkt_cli, item, needle):
    one_error_line(fkt_cli("train", "--set", item, "--out", str(tmp_path / "run")), f"--set {item}", needle, code=2)


def test_limit_train_beyond_the_split_says_so(tmp_path, fkt_cli):
    data = make_fashion_mnist(tmp_path / "fm", train_per_class=4, test_per_class=1)
    result = fkt_cli("train", "--method", "supervised", "--dataset", "fashion-mnist", "--data-root", str(data.root),
                     "--limit-train", "1000", "--epochs", "1", "--batch-size", "8", "--accelerator", "cpu",
                     "--no-progress", "--set", "evaluate.probes=[]", "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if "--limit-train 1000" in line]
    assert len(notes) == 1 and "only 30 images" in notes[0], result.stdout


def test_ece_and_nll_on_hand_made_probabilities():
    # confidences 0.9 (right), 0.6 (wrong), 0.7 (right), each in its own 1/15-wide bin:
    # ECE = (|1 - 0.9| + |0 - 0.6| + |1 - 0.7|) / 3
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    targets = torch.tensor([0, 1, 1])
    metrics = classification_metrics(probs.log(), targets, ["a", "b"])
    assert metrics["ece"] == pytest.approx((0.1 + 0.6 + 0.3) / 3, abs=1e-6)
    assert metrics["nll"] == pytest.approx(-(0.9 * 0 + torch.tensor([0.9, 0.4, 0.7]).log().mean().item()), abs=1e-6)
    perfect = classification_metrics(torch.tensor([[10.0, -10.0], [-10.0, 10.0]]), torch.tensor([0, 1]), ["a", "b"])
    assert perfect["ece"] == pytest.approx(0.0, abs=1e-6)
