"""Where a grid's tasks run: in this process one after another (`sequential`, the default), in N worker
processes of this machine (`local`), or as SLURM job arrays through submitit (`slurm`).

A launcher runs *waves* of tasks: every task of a wave may run at once, and a wave starts when the one
before it has ended (the cells that reuse another cell's SSL pretraining, or copy it, wait for it so).
A task is any picklable callable without arguments that has a `name` (its log file's name); it writes
its results to disk (a cell's metrics.json), so a launcher returns nothing but raises `LaunchFailed`
naming the tasks that failed, after the others of their wave have ended.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from fkt.errors import UserError


class Task(Protocol):
    name: str

    def __call__(self) -> Any: ...


class LaunchFailed(Exception):
    """Some tasks of a launch did not end well; the others' results are on disk."""


class Launcher(Protocol):
    name: str
    waits: bool  # whether run() returns only when every task has ended (else it submits and returns)
    workers: int  # tasks that run at once (what a tuning study splits its trials over)

    def run(self, waves: Sequence[Sequence[Task]], folder: Path) -> None:
        """Run the waves; `folder` (under the grid's --out) takes the launcher's logs and scripts."""
        ...

    def describe(self, waves: Sequence[Sequence[Task]], folder: Path) -> str:
        """How the waves would run, as --dry-run prints it (for SLURM it writes the job scripts under `folder`)."""
        ...


class Sequential:
    """Every task in this process, in order: what `fkt reproduce` always did (and what DDP ranks run)."""

    name, waits, workers = "sequential", True, 1

    def run(self, waves: Sequence[Sequence[Task]], folder: Path) -> None:
        for wave in waves:
            for task in wave:
                task()

    def describe(self, waves: Sequence[Sequence[Task]], folder: Path) -> str:
        return "in this process, one after another"


SLURM_FLAGS = ("slurm_partition", "slurm_time", "slurm_gpus_per_task", "slurm_array_parallelism", "slurm_arg")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The launcher flags of `fkt reproduce` and `fkt tune`."""
    g = p.add_argument_group("launcher (where the cells run)")
    g.add_argument("--launcher", default="sequential", metavar="NAME",
                   help="sequential (this process, the default), local (--jobs worker processes; one GPU each "
                        "where there are GPUs) or slurm (SLURM job arrays through submitit)")
    g.add_argument("--jobs", type=int, metavar="N", help="local: worker processes (default 1)")
    g.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                   help="wait for every task and write the report (default: yes, but for slurm); "
                        "without it, write the report later with `fkt report DIR`")
    g.add_argument("--dry-run", action="store_true",
                   help="print the plan (cells, done or not, shared and copied) and, for slurm, write the job "
                        "scripts without submitting")
    g.add_argument("--slurm-partition", metavar="NAME", help="the SLURM partition to submit to")
    g.add_argument("--slurm-time", type=int, metavar="MINUTES",
                   help="time limit of one task (default 60); on SLURM's warning the cell saves and is requeued")
    g.add_argument("--slurm-gpus-per-task", type=int, metavar="N", help="GPUs of each task (a cell, or a DDP rank of one)")
    g.add_argument("--slurm-array-parallelism", type=int, metavar="N", help="tasks of an array running at once")
    g.add_argument("--slurm-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --slurm-arg account=abc --slurm-arg qos=high; repeatable")


def launcher_from_args(args: argparse.Namespace) -> Launcher:
    """The launcher the flags ask for, every flag checked first (one line naming it)."""
    name = getattr(args, "launcher", "sequential")
    if name not in LAUNCHERS:
        raise UserError(f"--launcher {name}: unknown; choose one of {', '.join(LAUNCHERS)}")
    given = [f"--{flag.replace('_', '-')}" for flag in SLURM_FLAGS if getattr(args, flag, None)]
    if given and name != "slurm":
        raise UserError(f"{given[0]}: a SLURM option, but --launcher is {name}; add --launcher slurm")
    if getattr(args, "jobs", None) is not None and name != "local":
        raise UserError(f"--jobs: only with --launcher local (here --launcher {name})")
    if getattr(args, "wait", None) is False and name != "slurm":
        raise UserError(f"--no-wait: only with --launcher slurm (--launcher {name} always waits)")
    return LAUNCHERS[name](args)


def check_jobs(jobs: int) -> int:
    cores = len(os.sched_getaffinity(0))
    if not 1 <= jobs <= cores:
        raise UserError(f"--jobs {jobs}: must be between 1 and this machine's {cores} cores")
    return jobs


def _sequential(args: argparse.Namespace) -> Launcher:
    return Sequential()


def _local(args: argparse.Namespace) -> Launcher:
    from fkt.launch.local import LocalLauncher

    return LocalLauncher(check_jobs(1 if args.jobs is None else args.jobs))


def _slurm(args: argparse.Namespace) -> Launcher:
    from fkt.launch.slurm import SlurmLauncher

    return SlurmLauncher.from_args(args)


LAUNCHERS: dict[str, Callable[[argparse.Namespace], Launcher]] = {
    "sequential": _sequential, "local": _local, "slurm": _slurm}
