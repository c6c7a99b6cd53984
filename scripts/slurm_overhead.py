"""What the SLURM path costs before training starts, against the stand-in scheduler (tests/fake_slurm):
the seconds from a cell's submission (its array's `sbatch` call) to its first training step, against
the same for the sequential launcher (from the command's start), and the scheduler calls per cell.

A cell's first step is when its `checkpoints/last.ckpt` first appears (`--checkpoint-every-n-steps 1`
saves after every step), polled every 20 ms. Run it with nothing else on the machine:

    .venv/bin/python scripts/slurm_overhead.py [WORKDIR]
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FKT = [str(REPO / ".venv" / "bin" / "fkt"), "reproduce", "--preset", "quick", "--seeds", "2", "--limit-train", "512",
       "--checkpoint-every-n-steps", "1", "--no-progress"]


def first_steps(out: Path, seen: dict[str, float], stop: threading.Event) -> None:
    """Each cell's first last.ckpt, as the time it appeared."""
    while not stop.is_set():
        for ckpt in out.glob("runs/*/checkpoints/**/last.ckpt"):
            seen.setdefault(ckpt.parts[len(out.parts) + 1], time.time())
        time.sleep(0.02)


def launch(out: Path, extra: list[str], env: dict[str, str]) -> tuple[float, dict[str, float], float]:
    seen: dict[str, float] = {}
    stop = threading.Event()
    out.mkdir(parents=True)
    watcher = threading.Thread(target=first_steps, args=(out, seen, stop), daemon=True)
    watcher.start()
    start = time.time()
    subprocess.run([*FKT, *extra, "--out", str(out)], env=env, check=True, stdout=subprocess.DEVNULL)
    end = time.time()
    stop.set()
    watcher.join()
    return start, seen, end - start


def main() -> None:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="fkt-slurm-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start, seen, wall = launch(work / "sequential", [], env)
    print(f"sequential: {wall:.1f} s in all; first cell's first step {min(seen.values()) - start:.1f} s after the start")

    slurm = {**env, "PATH": f"{REPO / 'tests' / 'fake_slurm'}{os.pathsep}{env['PATH']}",
             "FAKE_SLURM_DIR": str(work / "scheduler")}
    start, seen, wall = launch(work / "slurm", ["--launcher", "slurm", "--wait", "--slurm-array-parallelism", "1"],
                               slurm)
    calls = [line.split(maxsplit=2) for line in (work / "scheduler" / "calls.log").read_text().splitlines()]
    submitted = {line[2].split()[-1]: float(line[0]) for line in calls if line[1] == "sbatch"}
    print(f"slurm (stand-in, one task at a time): {wall:.1f} s in all")
    dispatch, startup = per_task(work, seen, sorted(submitted.values()))
    print(f"  per cell: {sum(dispatch) / len(dispatch):.2f} s from a free slot (or its sbatch) to its process "
          f"start (the stand-in's dispatch), {sum(startup) / len(startup):.1f} s from its process start to its "
          f"first training step (Python, imports, data, model: what a task adds over an in-process cell), "
          f"over {len(startup)} cells")
    counts = collections.Counter(command for _, command, *_ in calls)
    cells = len(list((work / "slurm" / "runs").iterdir()))
    print(f"scheduler calls for {cells} cells: {dict(counts)}; per cell: "
          + ", ".join(f"{c} {n / cells:.2f}" for c, n in sorted(counts.items())))


def per_task(work: Path, seen: dict[str, float], submissions: list[float]) -> tuple[list[float], list[float]]:
    """(dispatch latency, start-up) of every cell's task, from the stand-in's job records."""
    jobs = json.loads((work / "slurm" / "launch" / "jobs.json").read_text())
    records = {path.stem: json.loads(path.read_text()) for path in (work / "scheduler" / "jobs").glob("*.json")}
    tasks = [(records[job.split("_")[0]]["tasks"][job.split("_")[1] if "_" in job else "0"], cell)
             for cell, job in jobs.items()]
    dispatch, startup, free = [], [], submissions[0]
    for task, cell in sorted(tasks, key=lambda t: t[0]["starts"][0]):
        begin = task["starts"][0]
        ready = max(free, max(s for s in submissions if s <= begin))
        dispatch.append(begin - ready)
        if cell in seen:
            startup.append(seen[cell] - begin)
        free = task["ends"][-1]
    return dispatch, startup


if __name__ == "__main__":
    main()
