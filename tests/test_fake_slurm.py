"""The stand-in SLURM scheduler (tests/fake_slurm) driving submitit's SlurmExecutor, as fkt's SLURM
launcher does: arrays at a parallelism, dependencies, preemption with checkpoint and requeue.

No training: the jobs are small functions of this module (the tasks import it: PYTHONPATH).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

FAKE_SLURM = Path(__file__).resolve().parent / "fake_slurm"
UNFINISHED = {"PENDING", "RUNNING", "REQUEUED", "UNKNOWN"}


@pytest.fixture
def slurm(tmp_path: Path, monkeypatch) -> Path:
    """The fake scheduler first on PATH, its state in tmp_path/slurm (returned); jobs left running by
    a failed test are cancelled at its end."""
    state = tmp_path / "slurm"
    monkeypatch.setenv("PATH", f"{FAKE_SLURM}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FAKE_SLURM.parent), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("FAKE_SLURM_PREEMPT", raising=False)
    yield state
    ids = [p.stem for p in (state / "jobs").glob("*.json")]
    if ids:
        subprocess.run([str(FAKE_SLURM / "scancel"), *ids], check=False)


def executor(tmp_path: Path, **parameters) -> submitit.SlurmExecutor:
    ex = submitit.SlurmExecutor(folder=tmp_path / "submitit")
    ex.update_parameters(time=5, **parameters)
    return ex


def job_record(state: Path, job: submitit.Job) -> dict:
    """The fake scheduler's record of the SLURM job (the whole array) behind a submitit job."""
    return json.loads((state / "jobs" / f"{job.job_id.split('_')[0]}.json").read_text())


def final_state(job: submitit.Job, timeout_s: float = 15) -> str:
    """The job's state through sacct once it has ended (the result pickle comes a little earlier)."""
    deadline = time.time() + timeout_s
    while (state := job.watcher.get_state(job.job_id, mode="force")) in UNFINISHED and time.time() < deadline:
        time.sleep(0.2)
    return state


def calls(state: Path, command: str) -> list[str]:
    """The arguments of each logged call of `command`."""
    lines = (state / "calls.log").read_text().splitlines()
    return [line.split(" ", 2)[2] for line in lines if line.split(" ")[1] == command]


def square(x: int) -> int:
    return x * x


def mark_done(folder: str, i: int) -> int:
    time.sleep(0.2)
    Path(folder, f"first-{i}").write_text("done")
    return i


def check_first_done(folder: str, i: int) -> str:
    if not all(Path(folder, f"first-{j}").exists() for j in range(2)):
        raise RuntimeError("started before the first array ended")
    return submitit.JobEnvironment().job_id


def fail() -> None:
    raise ValueError("this job fails")


class Patient(Checkpointable):
    """Writes started-<attempt>, then waits (20 s at most) for `checkpointed`, which only its own
    checkpoint() writes: the first attempt ends through preemption, the second returns at once."""

    def __init__(self, folder: str, attempt: int = 0) -> None:
        self.folder, self.attempt = folder, attempt

    def __call__(self) -> int:
        Path(self.folder, f"started-{self.attempt}").write_text(os.environ.get("SLURM_RESTART_COUNT", "0"))
        deadline = time.time() + 20
        while not Path(self.folder, "checkpointed").exists() and time.time() < deadline:
            time.sleep(0.05)
        return self.attempt

    def checkpoint(self) -> DelayedSubmission:
        Path(self.folder, "checkpointed").write_text(str(self.attempt))
        return DelayedSubmission(Patient(self.folder, self.attempt + 1))


@pytest.mark.timeout(60)
def test_array_at_its_parallelism(slurm, tmp_path):
    assert submitit.AutoExecutor(folder=tmp_path / "auto").cluster == "slurm"  # srun is on PATH
    jobs = executor(tmp_path, array_parallelism=2).map_array(square, [1, 2, 3])
    assert [job.result() for job in jobs] == [1, 4, 9]
    assert [final_state(job) for job in jobs] == ["COMPLETED"] * 3
    assert [job.state for job in jobs] == ["COMPLETED"] * 3
    assert len(calls(slurm, "sbatch")) == 1 and len(calls(slurm, "srun")) == 3
    tasks = job_record(slurm, jobs[0])["tasks"]
    assert [t["runs"] for t in tasks.values()] == [1, 1, 1]
    assert tasks["2"]["starts"][0] >= min(tasks["0"]["ends"][0], tasks["1"]["ends"][0])  # %2: one waited


@pytest.mark.timeout(60)
def test_dependent_array_starts_after_the_first_ends(slurm, tmp_path):
    folder = str(tmp_path)
    first = executor(tmp_path).map_array(mark_done, [folder] * 2, [0, 1])
    first_id = first[0].job_id.split("_")[0]
    second = executor(tmp_path, additional_parameters={"dependency": f"afterany:{first_id}"}).map_array(
        check_first_done, [folder] * 2, [0, 1])
    assert [job.result() for job in second] == [job.job_id for job in second]
    ends = [t["ends"][-1] for t in job_record(slurm, first[0])["tasks"].values()]
    starts = [t["starts"][0] for t in job_record(slurm, second[0])["tasks"].values()]
    assert min(starts) >= max(ends)
    assert [final_state(job) for job in first + second] == ["COMPLETED"] * 4


@pytest.mark.timeout(60)
def test_afterok_on_a_failed_job_cancels(slurm, tmp_path):
    failed = executor(tmp_path).submit(fail)
    never = executor(tmp_path, additional_parameters={"dependency": f"afterok:{failed.job_id}"}).submit(square, 2)
    assert final_state(failed) == "FAILED"
    assert final_state(never) == "CANCELLED"
    assert job_record(slurm, never)["reason"] == "DependencyNeverSatisfied"
    assert job_record(slurm, never)["tasks"]["0"]["runs"] == 0


@pytest.mark.timeout(60)
def test_preemption_checkpoints_requeues_and_reruns(slurm, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SLURM_PREEMPT", f"0:{tmp_path}/started-0")
    job = executor(tmp_path).submit(Patient(str(tmp_path)))
    assert job.result() == 1  # the second attempt's value
    assert (tmp_path / "checkpointed").read_text() == "0"
    assert (tmp_path / "started-1").read_text() == "1"  # SLURM_RESTART_COUNT in the second run
    assert final_state(job) == "COMPLETED"
    task = job_record(slurm, job)["tasks"]["0"]
    assert (task["runs"], task["restart_count"]) == (2, 1)
    assert task["signals"] == [{"run": 1, "signal": "SIGUSR2", "reason": "preempt"}]
    assert calls(slurm, "scontrol") == [f"requeue {job.job_id}"]
