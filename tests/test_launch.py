"""Launchers (`--launcher local|slurm`): a tiny grid through 2 local worker processes gives the sequential
run's metrics to the last digit, a killed worker's cells resume on the next launch, and the SLURM path
(submitit, against the stand-in scheduler in tests/fake_slurm) runs the same grid, waits the shared
pretraining and the copy for their source, and requeues a preempted task that then resumes exactly.
The bad launcher flags are refused before anything is written."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import MAKERS, folder_grid, one_error_line
from fkt.launch import LaunchFailed
from fkt.launch.local import LocalLauncher
from fkt.reproduce import cell_waves, grid_plan, run_grid

FAKE_SLURM = Path(__file__).resolve().parent / "fake_slurm"
# The metrics that must agree to the last digit between launchers (seconds differ, of course).
SAME = ("val", "test", "images")


def tiny_grid(root: Path):
    """Functional, representational and supervised-matched at two values of lambda_ce: the second
    representational cell reuses the first's SSL stage and the second supervised-matched cell is a copy
    of the first (lambda_ce reaches neither), so they make a second wave."""
    return folder_grid(root, {"epochs": 1, "pretrain_epochs": 1, "checkpoint_every_n_steps": 1},
                       evaluate={"probes": []}, grid={"methods": ["functional", "representational",
                                                                 "supervised-matched"], "seeds": [0],
                                                     "axes": {"method.lambda_ce": [1.0, 2.0]}})


def results(out: Path) -> dict[str, dict]:
    runs = {}
    for metrics in sorted((out / "runs").glob("*/metrics.json")):
        run = json.loads(metrics.read_text())
        runs[metrics.parent.name] = {key: run[key] for key in SAME} | {"passes": run["compute"]["image_passes"]}
    return runs


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The grid in this process with one torch thread: what each 1-thread worker of 2 on 2 cores runs
    (a different thread count changes the sums' order, so the last digits)."""
    data = MAKERS["imagefolder"](tmp_path_factory.mktemp("data"), num_classes=3, train_per_class=8, test_per_class=2)
    out = tmp_path_factory.mktemp("sequential")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_grid(tiny_grid(data.root), out)
    finally:
        torch.set_num_threads(threads)
    return data, results(out)


class KillWhenSaved:
    """A cell task that kills its own worker (SIGKILL) once the cell has saved a mid-run checkpoint."""

    def __init__(self, task) -> None:
        self.task, self.name = task, task.name

    def __call__(self) -> None:
        last = Path(self.task.config["out"]) / "checkpoints" / "last.ckpt"

        def watch() -> None:
            while not last.exists():
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, daemon=True).start()
        self.task()


def test_two_local_workers_match_the_sequential_run_and_a_killed_worker_resumes(sequential, tmp_path):
    data, reference = sequential
    config = tiny_grid(data.root)
    waves = cell_waves(grid_plan(config, tmp_path))
    assert [len(wave) for wave in waves] == [4, 2]  # the shared pretraining and the copy wait for their sources
    victim = next(task for task in waves[0] if "functional" in task.name)
    waves[0][waves[0].index(victim)] = KillWhenSaved(victim)
    with pytest.raises(LaunchFailed, match="a worker process died"):
        LocalLauncher(2).run(waves, tmp_path / "launch")
    assert (Path(victim.config["out"]) / "checkpoints" / "last.ckpt").exists()
    assert not (Path(victim.config["out"]) / "metrics.json").exists()

    markdown = run_grid(config, tmp_path, LocalLauncher(2))  # the next launch finishes the grid
    assert results(tmp_path) == reference
    resumed = json.loads((Path(victim.config["out"]) / "metrics.json").read_text())
    assert resumed["compute"]["stages"]["train"]["resumed"] is True
    logs = sorted(p.name for p in (tmp_path / "launch").glob("*.log"))
    assert len(logs) == 6 and "| imagefolder |" in markdown


@pytest.mark.parametrize("args, needle", [
    (["--launcher", "pbs"], "--launcher pbs: unknown"),
    (["--launcher", "local", "--jobs", "0"], "--jobs 0: must be between 1 and"),
    (["--launcher", "local", "--jobs", "999"], "--jobs 999: must be between 1 and"),
    (["--jobs", "2"], "--jobs: only with --launcher local"),
    (["--slurm-partition", "gpu"], "--slurm-partition: a SLURM option, but --launcher is sequential"),
    (["--launcher", "local", "--slurm-time", "5"], "--slurm-time: a SLURM option"),
    (["--launcher", "local", "--no-wait"], "--no-wait: only with --launcher slurm"),
    (["--launcher", "slurm", "--slurm-arg", "account"], "--slurm-arg account: expected KEY=VALUE"),
])
@pytest.mark.no_training
def test_bad_launcher_flags_are_refused_before_anything_is_written(fkt_cli, tmp_path, args, needle):
    result = fkt_cli("reproduce", "--preset", "quick", *args, "--dry-run", "--out", str(tmp_path / "g"))
    one_error_line(result, needle, code=2)
    assert not (tmp_path / "g").exists()


@pytest.mark.no_training
def test_slurm_without_sbatch_is_refused(fkt_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    result = fkt_cli("reproduce", "--preset", "quick", "--launcher", "slurm", "--out", str(tmp_path / "g"))
    one_error_line(result, "sbatch not found on PATH", code=2)
    assert not (tmp_path / "g").exists()


@pytest.mark.no_training
def test_dry_run_prints_the_plan_and_writes_the_slurm_scripts_only(fkt_cli, tmp_path, make_dataset):
    data = make_dataset("imagefolder", num_classes=3, train_per_class=8, test_per_class=2)
    config = tmp_path / "grid.yaml"
    config.write_text(json.dumps(tiny_grid(data.root).to_dict(), default=str))
    result = fkt_cli("reproduce", "--config", str(config), "--launcher", "slurm", "--slurm-partition", "gpu",
                     "--slurm-arg", "account=abc", "--dry-run", "--out", str(tmp_path / "g"))
    assert result.returncode == 0, result.stderr
    assert "imagefolder-lambda_ce=2.0-supervised-matched-seed0: to run, a copy of" in result.stdout
    assert "reusing the SSL pretraining of imagefolder-lambda_ce=1.0-representational-seed0" in result.stdout
    assert "6 of 6 cells to run, in 2 wave(s)" in result.stdout
    second = (tmp_path / "g" / "launch" / "wave-2.sbatch").read_text()
    assert "#SBATCH --array=0-1%2" in second and "#SBATCH --partition=gpu" in second
    assert "#SBATCH --account=abc" in second and "#SBATCH --dependency=afterany:" in second
    assert "#SBATCH --signal=USR2@" in second
    assert sorted(p.name for p in (tmp_path / "g").rglob("*") if p.is_file()) == ["wave-1.sbatch", "wave-2.sbatch"]


def test_slurm_arrays_through_submitit_wait_for_sources_and_a_preempted_task_resumes_exactly(
        sequential, tmp_path, monkeypatch):
    """The stand-in scheduler runs each array task as a local process; the first wave's last task (the
    second wave has no such index: functional at lambda 1 and 2, representational at 1, then the
    representational cell that reuses its SSL stage) is sent SLURM's warning signal once it has saved a
    mid-run checkpoint, and is requeued."""
    from fkt.launch.slurm import SlurmLauncher

    data, reference = sequential
    config = tiny_grid(data.root)
    config.grid.methods = ["functional", "representational"]  # a copy is the local test's; 4 tasks here
    out = tmp_path / "grid"
    first = out / "runs" / "imagefolder-lambda_ce=2.0-functional-seed0"
    monkeypatch.setenv("PATH", f"{FAKE_SLURM}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(tmp_path / "slurm"))
    monkeypatch.setenv("FAKE_SLURM_PREEMPT", f"2:{first / 'checkpoints' / 'last.ckpt'}")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # each task one thread, as the reference
    launcher = SlurmLauncher({"time": 10, "job_name": "fkt", "signal_delay_s": 30, "additional_parameters": {},
                              "array_parallelism": 2}, wait=True, parallelism=2)
    markdown = run_grid(config, out, launcher)
    assert results(out) == {name: run for name, run in reference.items() if "supervised" not in name}
    resumed = json.loads((first / "metrics.json").read_text())
    assert resumed["compute"]["stages"]["train"]["resumed"] is True  # requeued after the signal, resumed
    shared = json.loads((out / "runs" / "imagefolder-lambda_ce=2.0-representational-seed0" / "metrics.json").read_text())
    assert shared["shared_pretraining"] == "imagefolder-lambda_ce=1.0-representational-seed0"
    calls = (tmp_path / "slurm" / "calls.log").read_text().splitlines()
    assert sum(" sbatch " in f" {line} " for line in calls) == 2  # one array a wave
    assert any("scontrol requeue" in line for line in calls)
    assert "| imagefolder |" in markdown


def test_each_local_worker_gets_a_gpu_of_its_own_where_there_are_gpus(monkeypatch):
    """Without a GPU here, the GPUs a process may use are read from CUDA_VISIBLE_DEVICES, as on a GPU box."""
    from fkt.errors import UserError

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert LocalLauncher(2).slots()[0] == ["3", "5"]
    assert LocalLauncher(1).slots()[0] == ["3"]
    with pytest.raises(UserError, match="--jobs 3: more workers than this machine's 2 GPUs"):
        LocalLauncher(3).slots()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    slots, threads = LocalLauncher(2).slots()
    assert slots == [None, None] and threads == max(1, len(os.sched_getaffinity(0)) // 2)
