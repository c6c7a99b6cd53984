"""`--launcher slurm`: each wave a SLURM job array through submitit, one task a cell; a wave after the
first depends on the one before (`--dependency=afterany`: its tasks check their sources finished).

Preemption and time limits: SLURM sends submitit's warning signal (USR2, `signal_delay_s` before the
end); the cell finishes its step, saves last.ckpt and stops (fkt.checkpointing.STOP_SIGNALS), then
submitit's handler calls the task's `checkpoint` and requeues it; the next attempt resumes exactly.
A task that asks for several devices gets as many SLURM tasks on its node, which Lightning's SLURM
environment turns into DDP ranks.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
from pathlib import Path
from typing import Any, Sequence

from fkt.errors import UserError
from fkt.io import atomic_write_json, atomic_write_text
from fkt.launch import LaunchFailed, Task

# Seconds between SLURM's warning signal and the kill: time for a step and a checkpoint to finish.
SIGNAL_DELAY_S = 120


def preemption_signal() -> int:
    """The signal submitit listens to in a task (its SUBMITIT_PREEMPT_SIGNAL, USR2 by default)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


def parse_slurm_args(items: list[str]) -> dict[str, str]:
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--slurm-arg {item}: expected KEY=VALUE, e.g. --slurm-arg account=abc")
        extra[key.strip().lstrip("-")] = value
    return extra


class Preemptible:
    """A task as a SLURM job runs it: on the warning signal, training stops with last.ckpt saved
    (Interrupted), then submitit's handler calls `checkpoint` (the same task again) and requeues it."""

    def __init__(self, task: Task) -> None:
        self.task, self.name, self.ranks = task, task.name, getattr(task, "ranks", 1)

    def __call__(self) -> Any:
        from fkt.checkpointing import STOP_SIGNALS, Interrupted

        signum = preemption_signal()
        STOP_SIGNALS.add(signum)
        try:
            return self.task()
        except Interrupted as stop:
            handler = signal.getsignal(signum)
            if stop.signum == signum and callable(handler):
                handler(signum, None)  # submitit's: checkpoint(), `scontrol requeue`, exit
            raise

    def checkpoint(self) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


class SlurmLauncher:
    name = "slurm"

    def __init__(self, parameters: dict[str, Any], wait: bool, parallelism: int | None = None) -> None:
        self.parameters, self.waits = parameters, wait
        self.workers = parallelism or 1

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "SlurmLauncher":
        if args.slurm_time is not None and args.slurm_time < 1:
            raise UserError(f"--slurm-time {args.slurm_time}: minutes, at least 1")
        for flag in ("slurm_gpus_per_task", "slurm_array_parallelism"):
            if getattr(args, flag) is not None and getattr(args, flag) < 1:
                raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
        if not getattr(args, "dry_run", False) and shutil.which("sbatch") is None:
            raise UserError("--launcher slurm: sbatch not found on PATH; run on a SLURM login node "
                            "(or use --dry-run to write the job scripts, or --launcher local)")
        parameters: dict[str, Any] = {"time": args.slurm_time or 60, "job_name": "fkt",
                                      "signal_delay_s": SIGNAL_DELAY_S,
                                      "additional_parameters": parse_slurm_args(args.slurm_arg)}
        if args.slurm_partition:
            parameters["partition"] = args.slurm_partition
        if args.slurm_gpus_per_task:
            parameters["gpus_per_task"] = args.slurm_gpus_per_task
        if args.slurm_array_parallelism:
            parameters["array_parallelism"] = args.slurm_array_parallelism
        return cls(parameters, wait=bool(args.wait), parallelism=args.slurm_array_parallelism)

    def parameters_for(self, wave: Sequence[Task], after: str | None) -> dict[str, Any]:
        """submitit's parameters of one wave's array: the flags', its dependency, one SLURM task a rank."""
        extra = dict(self.parameters["additional_parameters"])
        if after is not None:
            extra["dependency"] = f"afterany:{after}"
        ranks = max(getattr(task, "ranks", 1) for task in wave)
        return {**self.parameters, "additional_parameters": extra, "ntasks_per_node": ranks}

    def describe(self, waves: Sequence[Sequence[Task]], folder: Path) -> str:
        """Writes each wave's job script, as submitit would submit it, under `folder`; submits nothing."""
        import sys

        from submitit.slurm.slurm import _make_sbatch_string

        scripts = []
        for i, wave in enumerate(waves):
            parameters = self.parameters_for(wave, f"JOB_ID_OF_WAVE_{i}" if i else None)
            command = f"{sys.executable} -u -m submitit.core._submit {folder / '%j'}"
            path = folder / f"wave-{i + 1}.sbatch"
            atomic_write_text(path, _make_sbatch_string(command, folder / "%j", map_count=len(wave), **parameters))
            scripts.append(str(path))
        return f"SLURM job arrays, nothing submitted; job scripts: {', '.join(scripts)}"

    def run(self, waves: Sequence[Sequence[Task]], folder: Path) -> None:
        import submitit

        jobs: list[tuple[Task, Any]] = []
        after = None
        for wave in waves:
            executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=3)
            executor.update_parameters(**self.parameters_for(wave, after))
            submitted = executor.submit_array([Preemptible(task) for task in wave])
            after = submitted[0].job_id.split("_")[0]
            jobs += zip(wave, submitted)
            print(f"[fkt] slurm: submitted {len(wave)} cell(s) as job {after} (logs: {folder / after})", flush=True)
        atomic_write_json(folder / "jobs.json", {task.name: job.job_id for task, job in jobs})
        if self.waits:
            self.wait(jobs)

    @staticmethod
    def wait(jobs: list[tuple[Task, Any]]) -> None:
        failed = []
        for task, job in jobs:
            try:
                job.result()
            except Exception as error:  # submitit re-raises the task's error, with its traceback
                failed.append(f"{task.name} (job {job.job_id}: {str(error).strip().splitlines()[-1]}; "
                              f"log: {job.paths.stderr})")
        if failed:
            raise LaunchFailed(f"{len(failed)} SLURM task(s) failed: {'; '.join(failed)}; "
                               "rerun the same command to resume them")
