"""fkt under faults: kills, Ctrl-C, full disks, NaN losses, two runs on one folder.

The kill tests drive a real `fkt train` subprocess and compare the resumed result with an
uninterrupted run of the same command: on CPU with a fixed seed they must be identical. The other
runs go through `fkt.cli.main` in this process: a subprocess costs an interpreter and Lightning's
import (seconds) each.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import one_error_line

from fkt.checkpointing import AtomicCheckpointIO
from fkt.errors import UserError
from fkt.io import RunLock, atomic_write_json

# Fields that honestly differ between an interrupted and an uninterrupted run.
WALL_CLOCK = {"train_seconds", "resumed"}


def fkt_command(data_root: Path, out: Path, *extra: str) -> list[str]:
    """`fkt train` in a subprocess, which does not see the suite's default backbone: it names resnet-tiny."""
    return [sys.executable, "-m", "fkt", "train", "--method", "functional", "--dataset", "fashion-mnist",
            "--data-root", str(data_root), "--image-size", "16", "--batch-size", "8", "--epochs", "3",
            "--backbone", "resnet-tiny", "--accelerator", "cpu", "--num-workers", "0", "--no-progress",
            "--set", "data.val_fraction=0.2", "--set", "model.proj_hidden_dim=64", "--out", str(out), *extra]


def without_wall_clock(value):
    if isinstance(value, dict):
        return {k: without_wall_clock(v) for k, v in value.items() if k not in WALL_CLOCK}
    return value


def same_weights(a: Path, b: Path) -> None:
    wa = torch.load(a, map_location="cpu", weights_only=False)["state_dict"]
    wb = torch.load(b, map_location="cpu", weights_only=False)["state_dict"]
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def position(checkpoint: Path) -> tuple[int, int]:
    """(epoch, batches done in it) of a checkpoint, as the resumable loader recorded it."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    loader = state["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    return loader["epoch"], loader["batches"]


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    from conftest import make_fashion_mnist

    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist"), num_classes=4, train_per_class=20,
                              test_per_class=5, gz=False)


@pytest.fixture(scope="module")
def uninterrupted(fmnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = subprocess.run(fkt_command(fmnist.root, out), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def run_until_mid_epoch_checkpoint(command: list[str], checkpoint: Path, stop: signal.Signals):
    """Start fkt, freeze it as soon as its last.ckpt is a mid-epoch one, then send `stop`."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = None
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if checkpoint.exists():
            process.send_signal(signal.SIGSTOP)
            epoch, batches = position(checkpoint)
            if 0 < batches < 8:  # 64 training images / batch 8 = 8 batches an epoch
                seen = (epoch, batches)
                process.send_signal(stop)
                process.send_signal(signal.SIGCONT)
                break
            process.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err, seen


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_equals_an_uninterrupted_run(fmnist, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    command = fkt_command(fmnist.root, out, "--checkpoint-every-n-steps", "3")
    code, _, _, seen = run_until_mid_epoch_checkpoint(command, out / "checkpoints" / "last.ckpt", signal.SIGKILL)
    assert code == -signal.SIGKILL and seen is not None, "never caught a mid-epoch checkpoint"
    assert not (out / "metrics.json").exists()

    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((uninterrupted / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert b["compute"]["stages"]["train"]["resumed"] is True
    assert without_wall_clock(a) == without_wall_clock(b)
    same_weights(uninterrupted / "checkpoints" / "best.ckpt", out / "checkpoints" / "best.ckpt")
    same_weights(uninterrupted / "checkpoints" / "last.ckpt", out / "checkpoints" / "last.ckpt")


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_exits_cleanly_and_resumes_exactly(fmnist, uninterrupted, tmp_path):
    out = tmp_path / "interrupted"
    command = fkt_command(fmnist.root, out, "--checkpoint-every-n-steps", "4")
    code, _, err, seen = run_until_mid_epoch_checkpoint(command, out / "checkpoints" / "last.ckpt", signal.SIGINT)
    assert seen is not None
    assert code == 130, err[-3000:]
    assert "Traceback" not in err
    assert "interrupted; saved" in err.strip().splitlines()[-1]
    assert position(out / "checkpoints" / "last.ckpt") != (0, 0)

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)  # same command, no flag
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((uninterrupted / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert without_wall_clock(a) == without_wall_clock(b)
    same_weights(uninterrupted / "checkpoints" / "best.ckpt", out / "checkpoints" / "best.ckpt")


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_and_term_and_keeps_the_last_good_checkpoint(fmnist, tmp_path, fkt_cli):
    out = tmp_path / "nan"
    first = fkt_cli(*fkt_command(fmnist.root, out, "--epochs", "1")[3:])
    assert first.returncode == 0, first.stderr[-3000:]
    (out / "metrics.json").unlink()
    last = out / "checkpoints" / "last.ckpt"
    before = hashlib.sha256(last.read_bytes()).hexdigest()

    # Resume for more epochs with an absurd weight on the cross-entropy: the weights blow up, the loss follows.
    blown = fkt_cli(*fkt_command(fmnist.root, out, "--epochs", "3", "--lambda", "1e30")[3:])
    assert blown.returncode == 3
    line = blown.stderr.strip().splitlines()[-1]
    assert line.startswith("fkt: error: training stopped:") and "Traceback" not in blown.stderr
    assert "loss term '" in line and "at step " in line and str(last) in line
    assert hashlib.sha256(last.read_bytes()).hexdigest() == before
    assert not (out / "metrics.json").exists()
    state = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.no_training  # refused before training
def test_a_second_run_on_the_same_out_is_refused(fmnist, tmp_path, fkt_cli):
    out = tmp_path / "busy"
    with RunLock(out):  # flock: a second open of the lock file conflicts, in this process too
        result = fkt_cli(*fkt_command(fmnist.root, out)[3:])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use by another fkt run" in lines[0] and str(out) in lines[0]
    assert "pid" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [".fkt.lock"]  # nothing written by the refused run


def test_the_lock_dies_with_its_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from fkt.io import RunLock\n"
        f"with RunLock({str(tmp_path)!r}):\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(UserError, match="in use"):
        RunLock(tmp_path).__enter__()
    holder.kill()
    holder.wait()
    with RunLock(tmp_path):  # SIGKILL released it: the rerun that resumes is not blocked
        pass


class FullDisk:
    """A file handle that takes `room` bytes, then fails as a full disk does."""

    def __init__(self, handle, room: int) -> None:
        self.handle, self.room = handle, room

    def write(self, data) -> int:
        data = data if isinstance(data, str) else bytes(data)
        if len(data) > self.room:
            self.handle.write(data[: self.room])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


@pytest.fixture
def disk_fills_after(monkeypatch):
    """Make every file opened through os.fdopen (as atomic_write does) run out of space."""
    def fill(room: int) -> None:
        real = os.fdopen

        def fdopen(fd, *args, **kwargs):
            return FullDisk(real(fd, *args, **kwargs), room)

        monkeypatch.setattr(os, "fdopen", fdopen)
    return fill


def test_a_full_disk_leaves_the_previous_json_intact(tmp_path, disk_fills_after):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"accuracy": 0.5})
    disk_fills_after(10)
    with pytest.raises(OSError) as caught:
        atomic_write_json(target, {"accuracy": 0.9, "padding": "x" * 1000})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert json.loads(target.read_text()) == {"accuracy": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temp file left behind


def test_a_full_disk_leaves_the_previous_checkpoint_intact(tmp_path, disk_fills_after):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    disk_fills_after(100)
    with pytest.raises(OSError):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(10_000)}}, target)
    assert torch.equal(torch.load(target, weights_only=False)["state_dict"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_full_disk_during_a_run_is_one_line_and_keeps_the_checkpoints(fmnist, tmp_path, monkeypatch, capsys):
    """The disk fills when metrics.json is written, after training: the checkpoints stay usable."""
    from fkt import cli, io as fkt_io

    real = fkt_io.atomic_write_text

    def full(path, text):
        if Path(path).name == "metrics.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, text)

    monkeypatch.setattr(fkt_io, "atomic_write_text", full)
    out = tmp_path / "run"
    argv = fkt_command(fmnist.root, out, "--epochs", "1", "--method", "supervised")[3:]
    assert cli.main(argv) == cli.EXIT_IO
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "metrics.json" in err[0]
    assert not (out / "metrics.json").exists()
    assert (out / "checkpoints" / "best.ckpt").is_file()
    monkeypatch.setattr(fkt_io, "atomic_write_text", real)
    assert cli.main(argv) == 0  # rerun once there is room: the finished stage is not trained again
    assert json.loads((out / "metrics.json").read_text())["compute"]["stages"]["train"]["resumed"] is True


@pytest.fixture(scope="module")
def finished_run(fmnist, tmp_path_factory):
    """A finished one-epoch supervised run, to point later commands at."""
    from fkt import cli

    out = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main(fkt_command(fmnist.root, out, "--epochs", "1", "--method", "supervised")[3:]) == 0
    return out


@pytest.mark.parametrize("flags, needles", [
    (["--set", "optim.supervised.lr=-0.1"], ["optim.supervised.lr", "greater than 0"]),
    (["--set", "optim.supervised.lr=0"], ["optim.supervised.lr", "greater than 0"]),
    (["--epochs", "-3"], ["trainer.epochs", "greater than 0"]),
    (["--batch-size", "0"], ["data.batch_size", "greater than 0"]),
    (["--devices", "64"], ["--devices 64", "this machine has"]),
    (["--accelerator", "tpu"], ["--accelerator"]),
    (["--resume"], ["--resume", "no checkpoint"]),
], ids=["negative lr", "zero lr", "negative epochs", "zero batch", "devices beyond",
        "unknown accelerator", "resume nothing"])
@pytest.mark.no_training  # each is refused before training
def test_run_mistakes_are_one_line_and_write_nothing(fmnist, tmp_path, fkt_cli, flags, needles):
    out = tmp_path / "run"
    one_error_line(fkt_cli(*fkt_command(fmnist.root, out, *flags)[3:]), *needles, code=2)
    assert not out.exists()  # no half-made run directory to mistake for a run


@pytest.mark.parametrize("damage", ["garbage", "truncated", "another backbone", "other classes"])
def test_a_bad_checkpoint_in_the_run_directory_is_refused(fmnist, finished_run, tmp_path, fkt_cli, damage):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "metrics.json").unlink()
    last = out / "checkpoints" / "last.ckpt"
    flags = ["--method", "supervised"]
    if damage == "garbage":
        last.write_bytes(b"\x00not a checkpoint\x00" * 100)
    elif damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif damage == "another backbone":
        flags += ["--backbone", "resnet34"]
    else:  # the same folder, now fed a dataset of three classes
        from conftest import make_imagefolder

        other = make_imagefolder(tmp_path / "three", num_classes=3, train_per_class=12, test_per_class=2)
        flags += ["--dataset", "imagefolder", "--data-root", str(other.root)]
        (out / "split.json").unlink()  # else the split of the old data is refused first
    one_error_line(fkt_cli(*fkt_command(fmnist.root, out, "--epochs", "2", *flags)[3:]), str(last), code=2)
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize("damage", ["garbage", "foreign torch file"])
def test_evaluate_refuses_a_foreign_checkpoint(tmp_path, fkt_cli, damage):
    bad = tmp_path / "model.ckpt"
    if damage == "garbage":
        bad.write_bytes(b"PK\x03\x04 not really a zip")
    else:
        torch.save({"weights": torch.ones(2)}, bad)
    one_error_line(fkt_cli("evaluate", "--checkpoint", str(bad)), str(bad), code=2)


@pytest.mark.slow
def test_a_few_label_run_with_two_streams_resumes_exactly_after_sigkill(fmnist, tmp_path):
    """The joint step reads the pool and a cycling labelled stream: both resume where they were, and so do
    the pseudo-labels' strong views and the weights' moving average (one run that has all of them:
    functional with FixMatch's term and a moving average; the suite's time keeps it to one)."""
    labels = ("--labels-per-class", "3", "--labelled-batch-size", "4", "--pseudo-label", "fixmatch",
              "--pl-threshold", "0.3", "--ema-decay", "0.9")
    whole = subprocess.run(fkt_command(fmnist.root, tmp_path / "whole", *labels), capture_output=True, text=True,
                           timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "killed"
    # step 5: the labelled stream (12 images, 4 a step) is inside its second cycle
    command = fkt_command(fmnist.root, out, *labels, "--checkpoint-every-n-steps", "5")
    code, _, _, seen = run_until_mid_epoch_checkpoint(command, out / "checkpoints" / "last.ckpt", signal.SIGKILL)
    assert code == -signal.SIGKILL and seen is not None, seen
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert a["images"] == {"labelled": 12, "unlabelled": 52} and b["compute"]["stages"]["train"]["resumed"]
    assert without_wall_clock(a) == without_wall_clock(b)
    same_weights(tmp_path / "whole" / "checkpoints" / "last.ckpt", out / "checkpoints" / "last.ckpt")
