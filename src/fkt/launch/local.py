"""`--launcher local --jobs N`: the tasks in N worker processes of this machine (the standard library's
process pool, started fresh: `spawn`). With GPUs each worker sees one GPU of its own (CUDA_VISIBLE_DEVICES,
set before it imports torch); without, the cores are split between the workers (torch's threads). Each
task's output goes to <folder>/<task>.log; a line here says when it is queued and when it ends.

No torch at this module's top: a worker imports it only after its GPU and threads are set.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Sequence

from fkt.errors import UserError
from fkt.launch import LaunchFailed, Task


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (none on a CPU machine)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu for gpu in listed.split(",") if gpu.strip() and gpu.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def pin_worker(slots: Any, threads: int) -> None:
    """A worker's start: take a GPU of its own (or none), and its share of the cores."""
    gpu = slots.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def run_logged(task: Task, log: Path) -> None:
    """Run `task` with this process's output (Python's and the C libraries') going to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a") as handle:
        os.dup2(handle.fileno(), 1), os.dup2(handle.fileno(), 2)
        try:
            task()
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


class LocalLauncher:
    name, waits = "local", True

    def __init__(self, jobs: int) -> None:
        self.jobs = self.workers = jobs

    def slots(self) -> tuple[list[str | None], int]:
        """One GPU per worker where there are GPUs, else none; torch threads per worker."""
        gpus = visible_gpus()
        if gpus and self.jobs > len(gpus):
            raise UserError(f"--jobs {self.jobs}: more workers than this machine's {len(gpus)} GPUs")
        cores = len(os.sched_getaffinity(0))
        return (list(gpus[:self.jobs]) if gpus else [None] * self.jobs), max(1, cores // self.jobs)

    def describe(self, waves: Sequence[Sequence[Task]], folder: Path) -> str:
        slots, threads = self.slots()
        where = f"GPUs {', '.join(map(str, slots))}" if slots[0] is not None else f"{threads} torch threads each"
        return f"{self.jobs} local worker processes ({where}); logs in {folder}"

    def run(self, waves: Sequence[Sequence[Task]], folder: Path) -> None:
        slots, threads = self.slots()
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        for slot in slots:
            queue.put(slot)
        failed: list[str] = []
        with ProcessPoolExecutor(self.jobs, mp_context=context, initializer=pin_worker,
                                 initargs=(queue, threads)) as pool:
            for wave in waves:
                failed += self.run_wave(pool, wave, Path(folder))
        if failed:
            raise LaunchFailed(f"{len(failed)} task(s) failed: {'; '.join(failed)}; "
                               "rerun the same command to resume them")

    @staticmethod
    def run_wave(pool: ProcessPoolExecutor, wave: Sequence[Task], folder: Path) -> list[str]:
        """Every task of the wave through the pool; the failures, each with its log."""
        running: dict[Future, Task] = {}
        for task in wave:
            running[pool.submit(run_logged, task, folder / f"{task.name}.log")] = task
            print(f"[fkt] local: queued {task.name} (log: {folder / f'{task.name}.log'})", flush=True)
        failed = []
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                task, error = running.pop(future), future.exception()
                log = folder / f"{task.name}.log"
                if isinstance(error, BrokenProcessPool):
                    raise LaunchFailed(f"a worker process died while running {task.name} (killed?); "
                                       f"its log: {log}; rerun the same command to resume") from None
                print(f"[fkt] local: {task.name} {'failed: ' + str(error) if error else 'done'}", flush=True)
                if error:
                    failed.append(f"{task.name} ({error}; log: {log})")
        return failed
