#!/usr/bin/env python3
"""A stand-in SLURM scheduler on one machine, for tests (README.md says what it emulates).

The commands sbatch, sacct, scancel, scontrol and srun in this folder are thin wrappers around the
`main_*` functions here. State lives in $FAKE_SLURM_DIR: `jobs/<id>.json` (one file per job, written
atomically under `.lock`), `jobs/<id>.sh` (the script as submitted), `jobs/<id>.runner.log`, `next_id`
and `calls.log` (one line per scheduler call). `sbatch` starts a detached runner
(`python3 _fake_slurm.py --run <id>`) that waits for the job's dependencies, runs its tasks, and
turns cancellations, requeues, time limits and test preemptions into signals and states.
Standard library only: the job's Python environment must not matter to the scheduler.
"""
from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

HERE = Path(__file__).resolve().parent
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}
ACTIVE = {"PENDING", "RUNNING", "REQUEUED"}
POLL_S = 0.1
KILL_WAIT_S = float(os.environ.get("FAKE_SLURM_KILL_WAIT", "5"))  # SIGTERM -> SIGKILL (SLURM's KillWait)
SBATCH_SHORT = {"-a": "array", "-o": "output", "-e": "error", "-J": "job-name", "-d": "dependency",
                "-t": "time", "-D": "chdir", "-p": "partition", "-n": "ntasks", "-N": "nodes",
                "-c": "cpus-per-task", "-G": "gpus", "-q": "qos", "-A": "account"}
SBATCH_FLAGS = {"parsable", "exclusive", "requeue", "no-requeue", "hold", "quiet", "verbose", "overcommit",
                "contiguous", "wait", "test-only", "no-kill", "spread-job", "use-min-nodes"}
SRUN_SHORT = {"-o": "output", "-e": "error", "-n": "ntasks", "-N": "nodes", "-c": "cpus-per-task",
              "-J": "job-name", "-p": "partition", "-t": "time", "-w": "nodelist", "-x": "exclude",
              "-G": "gpus", "-D": "chdir", "-i": "input"}
SRUN_FLAGS = {"unbuffered", "exclusive", "overlap", "label", "verbose", "quiet", "pty", "no-kill",
              "multi-prog", "exact", "whole", "kill-on-bad-exit", "overcommit", "disable-status"}


class SlurmError(Exception):
    """A refused command: printed as `<command>: error: <message>`, exit status 1."""


# --- state --------------------------------------------------------------------------------------
def state_dir() -> Path:
    """$FAKE_SLURM_DIR: required, so that a test never shares state with another by accident."""
    value = os.environ.get("FAKE_SLURM_DIR")
    if not value:
        raise SlurmError("FAKE_SLURM_DIR is not set (the fake scheduler keeps its state there)")
    path = Path(value).resolve()
    (path / "jobs").mkdir(parents=True, exist_ok=True)
    return path


def log_call(command: str, args: list[str]) -> None:
    """One line per scheduler call, so that tests can count calls; O_APPEND keeps lines whole."""
    line = f"{time.time():.3f} {command} {shlex.join(args)}\n"
    fd = os.open(state_dir() / "calls.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """One lock for every read-modify-write: sbatch, the runners, srun, scancel, scontrol."""
    with open(state_dir() / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def job_path(job_id: str) -> Path:
    return state_dir() / "jobs" / f"{job_id}.json"


def write_json(path: Path, data: dict) -> None:
    """Atomic: a reader never sees half a job."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=1)
    os.replace(tmp, path)


def read_job(job_id: str) -> dict:
    return json.loads(job_path(job_id).read_text())


def all_jobs() -> list[dict]:
    """Every job of this state folder, in submission order."""
    jobs = [json.loads(p.read_text()) for p in (state_dir() / "jobs").glob("*.json")]
    return sorted(jobs, key=lambda job: int(job["id"]))


def update_job(job_id: str, change: Callable[[dict], Any]) -> Any:
    """Read, change in place and write back one job under the lock; returns what `change` returns."""
    with locked():
        job = read_job(job_id)
        out = change(job)
        write_json(job_path(job_id), job)
    return out


def allocate_ids(count: int) -> int:
    """`count` consecutive ids. The first starts from the clock (ms), so ids stay unique across state
    folders: submitit caches finished jobs' states by id in one watcher per Python process."""
    with locked():
        counter = state_dir() / "next_id"
        first = int(counter.read_text()) if counter.exists() else int(time.time() * 1000) % 10**9 + 1
        counter.write_text(str(first + count))
    return first


def resolve(spec: str) -> list[tuple[str, str]]:
    """`A`, `A_i` or a task's own SLURM_JOB_ID -> [(job id, task index)], empty when unknown."""
    main, _, index = spec.partition("_")
    for job in all_jobs():
        if job["id"] == main and not index:
            return [(main, i) for i in job["tasks"]]
        if job["id"] == main:
            return [(main, index)] if index in job["tasks"] else []
        raw = [(job["id"], i) for i, task in job["tasks"].items() if task["raw_id"] == main and not index]
        if raw:
            return raw
    return []


def split_ids(values: list[str]) -> list[str]:
    """Ids given as several arguments and/or comma-separated lists."""
    return [part for value in values for part in value.split(",") if part]


# --- parsing ------------------------------------------------------------------------------------
def parse_options(tokens: list[str], short: dict[str, str], flags: set[str]) -> tuple[dict, list[str]]:
    """SLURM-style options up to the first non-option: (options by long name, the rest).
    `--key` not in `flags` takes the next token as its value, unless no token is left."""
    options: dict[str, Any] = {}
    i = 0
    while i < len(tokens) and tokens[i].startswith("-") and tokens[i] != "-":
        token = tokens[i]
        if token == "--":
            return options, tokens[i + 1:]
        if token.startswith("--"):
            key, eq, value = token[2:].partition("=")
            takes = not eq and key not in flags and i + 1 < len(tokens)
        elif token[:2] in short:
            key, value = short[token[:2]], token[2:]
            takes = len(token) == 2 and key not in flags and i + 1 < len(tokens)
        else:
            key, value, takes = token[1:], True, False
        if takes:
            i += 1
            value = tokens[i]
        options[key] = True if value == "" and not takes else value
        i += 1
    return options, tokens[i:]


def script_options(text: str) -> dict:
    """The `#SBATCH` lines before the first command, as SLURM reads them."""
    options: dict = {}
    for line in text.splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#SBATCH"):
            options.update(parse_options(shlex.split(stripped[7:]), SBATCH_SHORT, SBATCH_FLAGS)[0])
        elif stripped and not stripped.startswith("#"):
            break
    return options


def parse_array(spec: str) -> tuple[list[int], int | None]:
    """`0-9%2`, `1,3,5`, `0-10:2` -> (indices, at most this many at once or None)."""
    spec, _, limit = spec.partition("%")
    indices: list[int] = []
    for part in spec.split(","):
        bounds, _, step = part.partition(":")
        low, _, high = bounds.partition("-")
        indices.extend(range(int(low), int(high or low) + 1, int(step or 1)))
    if not indices:
        raise SlurmError(f"--array={spec}: no task")
    return sorted(set(indices)), int(limit) if limit else None


def parse_time(spec: str) -> float | None:
    """SLURM's --time (`M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`) in seconds; None = no limit."""
    if spec.upper() in {"UNLIMITED", "INFINITE", "-1"}:
        return None
    days, _, rest = spec.rpartition("-")
    parts = [float(p) for p in rest.split(":")]
    if days:
        seconds = sum(p * f for p, f in zip(parts, (3600, 60, 1)))
    else:
        seconds = {1: lambda: parts[0] * 60, 2: lambda: parts[0] * 60 + parts[1],
                   3: lambda: parts[0] * 3600 + parts[1] * 60 + parts[2]}[len(parts)]()
    return float(days or 0) * 86400 + seconds


def parse_signal(spec: str) -> dict:
    """`[R:|B:]USR2@90` -> {"signal": "SIGUSR2", "before_s": 90}."""
    spec = re.sub(r"^[RB]+:", "", spec)
    name, _, before = spec.partition("@")
    return {"signal": signal_name(name), "before_s": float(before or 60)}


def signal_name(spec: str) -> str:
    """`USR2`, `SIGUSR2` or `12` -> `SIGUSR2` (refused when unknown)."""
    try:
        return signal.Signals(int(spec)).name if spec.isdigit() else signal.Signals[
            spec.upper() if spec.upper().startswith("SIG") else "SIG" + spec.upper()].name
    except (KeyError, ValueError):
        raise SlurmError(f"invalid signal {spec!r}") from None


def substitute(pattern: str, ids: dict[str, str]) -> str:
    """SLURM's filename patterns: %A %a %j %t %N %n %s %x %u %% (with optional zero padding, %3a)."""
    def one(match: re.Match) -> str:
        width, key = match.group(1), match.group(2)
        if key == "%":
            return "%"
        value = ids[key]
        return value.zfill(int(width)) if width and value.isdigit() else value
    return re.sub(r"%(\d*)([AajtNnsxu%])", one, pattern)


def pattern_ids(job: dict, index: str, rank: str = "0") -> dict[str, str]:
    """What each filename pattern letter stands for in one task of `job`."""
    task = job["tasks"][index]
    return {"A": job["id"], "a": index if job["array"] else "4294967294", "j": task["raw_id"], "t": rank,
            "N": "localhost", "n": "0", "s": "batch", "x": job["name"], "u": getpass.getuser()}


# --- sbatch -------------------------------------------------------------------------------------
def main_sbatch(argv: list[str]) -> int:
    """`sbatch [options] SCRIPT`: store the job, start its runner, print its id."""
    log_call("sbatch", argv)
    cli, rest = parse_options(argv, SBATCH_SHORT, SBATCH_FLAGS)
    if not rest:
        raise SlurmError("no batch script given (reading a script from stdin is not emulated)")
    text = Path(rest[0]).read_text()
    if not text.startswith("#!"):
        raise SlurmError("This does not look like a batch script. The first line must start with #! "
                         "followed by the path to an interpreter.")
    options = {**script_options(text), **cli}
    job = new_job({"job-name": Path(rest[0]).name, **options}, text)
    start_runner(job["id"], job["cwd"])
    print(job["id"] if options.get("parsable") else f"Submitted batch job {job['id']}", flush=True)
    return 0


def new_job(options: dict, text: str) -> dict:
    """Check the options, then write jobs/<id>.sh and jobs/<id>.json (all tasks PENDING)."""
    job = job_settings(options)
    indices = job.pop("indices")
    first = allocate_ids(len(indices))
    job_id = str(first)
    script = state_dir() / "jobs" / f"{job_id}.sh"
    script.write_text(text)
    script.chmod(0o755)
    job.update(id=job_id, script=str(script), submit_time=time.time(), reason=None, runner_pid=None,
               tasks={str(i): new_task(str(first + n)) for n, i in enumerate(indices)})
    with locked():
        write_json(job_path(job_id), job)
    return job


def job_settings(options: dict) -> dict:
    """The job's fields read from its options (and $FAKE_SLURM_PREEMPT); refused before any id exists."""
    try:
        indices, limit = parse_array(options["array"]) if "array" in options else ([0], None)
        time_limit = parse_time(str(options["time"])) if "time" in options else None
        warning = parse_signal(options["signal"]) if "signal" in options else None
    except ValueError as error:
        raise SlurmError(f"invalid option value: {error}") from None
    if options.get("dependency"):
        parse_dependency(options["dependency"])
    cwd = str(Path(options.get("chdir", os.getcwd())).resolve())
    array = "array" in options
    output = options.get("output", "slurm-%A_%a.out" if array else "slurm-%j.out")
    return {"name": options["job-name"], "cwd": cwd, "array": array, "indices": indices,
            "parallelism": limit or len(indices), "output": output,
            "error": options.get("error"), "open_mode": options.get("open-mode", "truncate"),
            "dependency": options.get("dependency"), "time_limit_s": time_limit, "signal": warning,
            "cpus_per_task": options.get("cpus-per-task"), "preempt": preempt_spec(cwd)}


def new_task(raw_id: str) -> dict:
    """A task's record: its own SLURM_JOB_ID, state, how often it ran, what it was sent."""
    return {"raw_id": raw_id, "state": "PENDING", "runs": 0, "restart_count": 0, "pid": None,
            "shell_pid": None, "exit_code": None, "starts": [], "ends": [], "signals": []}


def preempt_spec(cwd: str) -> dict | None:
    """$FAKE_SLURM_PREEMPT=`<task index or *>:<path>` (path may hold {task}): see README.md."""
    value = os.environ.get("FAKE_SLURM_PREEMPT")
    if not value:
        return None
    task, sep, path = value.partition(":")
    if not sep or not path or not (task == "*" or task.isdigit()):
        raise SlurmError(f"FAKE_SLURM_PREEMPT={value!r}: expected <task index or *>:<path>")
    return {"task": task, "path": str(Path(cwd, path))}


def start_runner(job_id: str, cwd: str) -> None:
    """Detached (own session, no inherited pipes), so that sbatch returns at once."""
    log = open(state_dir() / "jobs" / f"{job_id}.runner.log", "ab")
    with log:
        subprocess.Popen([sys.executable, str(HERE / "_fake_slurm.py"), "--run", job_id], cwd=cwd,
                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True, close_fds=True)


# --- dependencies -------------------------------------------------------------------------------
def parse_dependency(spec: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """`afterany:1:2,afterok:3_0` -> [(kind, [(job, task), ...]), ...]; refused when unknown."""
    if "?" in spec:
        raise SlurmError(f"--dependency={spec}: '?' (any of) is not emulated")
    out = []
    for clause in spec.split(","):
        kind, *ids = clause.split(":")
        if kind not in {"afterany", "afterok", "afternotok"} or not ids:
            raise SlurmError(f"--dependency={spec}: only afterany/afterok/afternotok:<id>[:<id>] emulated")
        tasks = [t for i in ids for t in resolve(i.split("+")[0])]
        if len(tasks) < len(ids):
            raise SlurmError(f"Batch job submission failed: Job dependency problem ({clause})")
        out.append((kind, tasks))
    return out


def dependency_outcome(spec: str) -> bool | None:
    """None while a job depended on has a task not ended; then whether every clause holds."""
    verdicts = []
    for kind, tasks in parse_dependency(spec):
        states = [read_job(job)["tasks"][index]["state"] for job, index in tasks]
        if not all(state in TERMINAL for state in states):
            return None
        ok = all(state == "COMPLETED" for state in states)
        verdicts.append({"afterany": True, "afterok": ok, "afternotok": not ok}[kind])
    return all(verdicts)


def wait_dependencies(job_id: str) -> bool:
    """Block until the dependency is decided; False (tasks CANCELLED) when it never will hold."""
    spec = read_job(job_id)["dependency"]
    if not spec:
        return True
    update_job(job_id, lambda job: job.update(reason="Dependency"))
    while (outcome := dependency_outcome(spec)) is None:
        if all(t["state"] in TERMINAL for t in read_job(job_id)["tasks"].values()):
            return False  # cancelled while waiting
        time.sleep(POLL_S * 2)

    def settle(job: dict) -> None:
        job["reason"] = None if outcome else "DependencyNeverSatisfied"
        for task in job["tasks"].values():
            if not outcome and task["state"] not in TERMINAL:
                task["state"] = "CANCELLED"
    update_job(job_id, settle)
    return outcome


# --- the runner ---------------------------------------------------------------------------------
class Runner:
    """Runs one job's tasks (at most `parallelism` at once) and watches them until all have ended."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.procs: dict[str, subprocess.Popen] = {}
        self.kill_at: dict[str, float] = {}    # SIGTERM sent; SIGKILL at this time
        self.warned: set[str] = set()           # the --signal=SIG@before_s warning sent this run

    def run(self) -> None:
        update_job(self.job_id, lambda job: job.update(runner_pid=os.getpid()))
        if not wait_dependencies(self.job_id):
            return
        while True:
            job = read_job(self.job_id)
            for index in list(self.procs):
                self.watch(job, index)
            job = read_job(self.job_id)  # what watch() ended may be PENDING again (requeued)
            pending = [i for i, t in job["tasks"].items() if t["state"] == "PENDING" and i not in self.procs]
            for index in pending[:max(0, job["parallelism"] - len(self.procs))]:
                self.start(index)
            if not self.procs and not pending:
                return
            time.sleep(POLL_S)

    def start(self, index: str) -> None:
        """Mark the task RUNNING (pid cleared first: srun records its own), then start its script."""
        def begin(job: dict) -> dict:
            task = job["tasks"][index]
            task.update(state="RUNNING", pid=None, exit_code=None, runs=task["runs"] + 1)
            task["starts"].append(time.time())
            return job
        job = update_job(self.job_id, begin)
        try:
            proc = self.spawn(job, index)
        except OSError as error:  # an output folder that does not exist: the task fails, as in SLURM
            print(f"task {index}: {error}", file=sys.stderr, flush=True)
            self.finish(index, 1)
            return
        self.procs[index] = proc
        self.kill_at.pop(index, None)
        self.warned.discard(index)
        update_job(self.job_id, lambda j: j["tasks"][index].update(shell_pid=proc.pid))

    @staticmethod
    def spawn(job: dict, index: str) -> subprocess.Popen:
        """The job's script with the task's environment and --output/--error files."""
        ids = pattern_ids(job, index)
        mode = "a" if job["open_mode"] == "append" else "w"
        out = open(Path(job["cwd"], substitute(job["output"], ids)), mode)
        err = open(Path(job["cwd"], substitute(job["error"], ids)), mode) if job["error"] else out
        with out, err:
            return subprocess.Popen([job["script"]], cwd=job["cwd"], env=task_env(job, index),
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)

    def abandon(self) -> None:
        """The runner failed: kill what runs and fail what has not ended, so no one waits forever."""
        for proc in self.procs.values():
            self.kill(proc, signal.SIGKILL)

        def fail(job: dict) -> None:
            job["reason"] = "FakeSlurmRunnerFailed"
            for task in job["tasks"].values():
                if task["state"] in ACTIVE:
                    task.update(state="FAILED", pid=None)
        update_job(self.job_id, fail)

    def watch(self, job: dict, index: str) -> None:
        """Signal, time out, terminate or reap one running task."""
        task, proc = job["tasks"][index], self.procs[index]
        if task["state"] == "RUNNING":
            self.maybe_preempt(job, index)
            self.maybe_time_out(job, index)
        elif index not in self.kill_at:  # CANCELLED, REQUEUED or TIMEOUT while running
            self.kill(proc, signal.SIGTERM)
            self.kill_at[index] = time.time() + KILL_WAIT_S
        if index in self.kill_at and time.time() > self.kill_at[index]:
            self.kill(proc, signal.SIGKILL)
        if proc.poll() is not None and not alive(task["pid"]):
            self.finish(index, proc.returncode)

    def maybe_preempt(self, job: dict, index: str) -> None:
        """FAKE_SLURM_PREEMPT: once the task runs (first run only) and the file exists, SIGUSR2 its srun."""
        spec, task = job["preempt"], job["tasks"][index]
        if not spec or spec["task"] not in {"*", index} or task["runs"] != 1 or not task["pid"]:
            return
        if any(s["reason"] == "preempt" for s in task["signals"]):
            return
        if Path(spec["path"].replace("{task}", index)).exists():
            send_signal(self.job_id, index, "SIGUSR2", "preempt")

    def maybe_time_out(self, job: dict, index: str) -> None:
        """--time and --signal=SIG@before_s: warn `before_s` before the limit, TIMEOUT at it."""
        limit, task = job["time_limit_s"], job["tasks"][index]
        if limit is None:
            return
        elapsed = time.time() - task["starts"][-1]
        warning = job["signal"]
        if warning and index not in self.warned and elapsed >= limit - warning["before_s"]:
            self.warned.add(index)
            send_signal(self.job_id, index, warning["signal"], "time-limit")
        if elapsed >= limit:
            set_state(self.job_id, index, {"RUNNING"}, "TIMEOUT")

    @staticmethod
    def kill(proc: subprocess.Popen, sig: int) -> None:
        """The whole task: its shell's process group holds srun's program and its children."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    def finish(self, index: str, code: int) -> None:
        """A REQUEUED task goes back to PENDING (restart count + 1); others end by their exit status."""
        def end(job: dict) -> None:
            task = job["tasks"][index]
            task.update(exit_code=code, pid=None)
            task["ends"].append(time.time())
            if task["state"] == "REQUEUED":
                task.update(state="PENDING", restart_count=task["restart_count"] + 1)
            elif task["state"] == "RUNNING":
                task["state"] = "COMPLETED" if code == 0 else "FAILED"
        update_job(self.job_id, end)
        self.procs.pop(index, None)


def task_env(job: dict, index: str) -> dict[str, str]:
    """The submission environment (SLURM_* dropped) plus what SLURM sets for one task on one node."""
    task = job["tasks"][index]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SLURM_JOB_ID=task["raw_id"], SLURM_JOBID=task["raw_id"], SLURM_JOB_NAME=job["name"],
               SLURM_SUBMIT_DIR=job["cwd"], SLURM_SUBMIT_HOST="localhost", SLURM_CLUSTER_NAME="fake",
               SLURM_JOB_NUM_NODES="1", SLURM_NNODES="1", SLURM_JOB_NODELIST="localhost",
               SLURM_NODELIST="localhost", SLURMD_NODENAME="localhost", SLURM_NODEID="0",
               SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NTASKS="1", SLURM_NPROCS="1",
               SLURM_NTASKS_PER_NODE="1", SLURM_TASKS_PER_NODE="1", SLURM_JOB_CPUS_PER_NODE=str(os.cpu_count()),
               SLURM_CPUS_ON_NODE=str(os.cpu_count()))
    if job["cpus_per_task"]:
        env["SLURM_CPUS_PER_TASK"] = str(job["cpus_per_task"])
    if task["restart_count"]:
        env["SLURM_RESTART_COUNT"] = str(task["restart_count"])
    if job["array"]:
        indices = [int(i) for i in job["tasks"]]
        env.update(SLURM_ARRAY_JOB_ID=job["id"], SLURM_ARRAY_TASK_ID=index,
                   SLURM_ARRAY_TASK_COUNT=str(len(indices)), SLURM_ARRAY_TASK_MIN=str(min(indices)),
                   SLURM_ARRAY_TASK_MAX=str(max(indices)))
    return env


def alive(pid: int | None) -> bool:
    """Whether a process runs (a zombie does not: a container's pid 1 may never reap it)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] not in {"Z", "X"}


def set_state(job_id: str, index: str, allowed: set[str], state: str) -> bool:
    """Move one task to `state` if it is in one of `allowed`; whether it moved."""
    def change(job: dict) -> bool:
        task = job["tasks"][index]
        if task["state"] not in allowed:
            return False
        task["state"] = state
        return True
    return update_job(job_id, change)


def send_signal(job_id: str, index: str, name: str, reason: str, batch: bool = False) -> bool:
    """Signal the task's program (the process srun became: SLURM signals job steps), or its batch
    shell with batch=True. Recorded in the task's `signals` as {"run", "signal", "reason"}; False when
    nothing was sent (the task does not run, or runs no srun step)."""
    def target(job: dict) -> int | None:
        task = job["tasks"][index]
        pid = task["shell_pid"] if batch else task["pid"]
        if task["state"] not in {"RUNNING", "REQUEUED"} or not alive(pid):
            return None
        os.kill(pid, signal.Signals[name])
        task["signals"].append({"run": task["runs"], "signal": name, "reason": reason})
        return pid
    return update_job(job_id, target) is not None


# --- srun ---------------------------------------------------------------------------------------
def main_srun(argv: list[str]) -> int:
    """`srun [options] COMMAND...`: one process. Records its pid in the task, redirects, execs."""
    options, command = parse_options(argv, SRUN_SHORT, SRUN_FLAGS)
    if not command:
        raise SlurmError("no command to run")
    in_job = "SLURM_JOB_ID" in os.environ
    if os.environ.get("FAKE_SLURM_DIR"):
        log_call("srun", argv)
    if in_job:
        record_srun_pid()
        os.environ.update(SLURM_STEP_ID="0", SLURM_STEPID="0", SLURM_PROCID="0", SLURM_LOCALID="0")
        redirect(options)
    try:
        os.execvp(command[0], command)
    except OSError as error:
        raise SlurmError(f"execve(): {command[0]}: {error.strerror}") from None


def current_task() -> tuple[str, str]:
    """(job id, task index) of the task this process runs in, from SLURM's own variables."""
    array_id = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_id:
        return array_id, os.environ["SLURM_ARRAY_TASK_ID"]
    return os.environ["SLURM_JOB_ID"], "0"


def record_srun_pid() -> None:
    """The runner signals this pid (the program srun is about to become)."""
    job_id, index = current_task()
    update_job(job_id, lambda job: job["tasks"][index].update(pid=os.getpid()))


def redirect(options: dict) -> None:
    """--output/--error (error defaults to output), patterns substituted, appended to."""
    job_id, index = current_task()
    ids = {**pattern_ids(read_job(job_id), index), "s": "0"}
    for key, fd in (("output", 1), ("error", 2)):
        path = options.get(key) or (options.get("output") if key == "error" else None)
        if path and path is not True:
            target = os.open(substitute(path, ids), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(target, fd)
            os.close(target)


# --- sacct --------------------------------------------------------------------------------------
def main_sacct(argv: list[str]) -> int:
    """`sacct [-o FIELDS] [--parsable2|--parsable] [-n] [-j IDS]...`: one line per task."""
    log_call("sacct", argv)
    fields, jobs, sep, header, i = ["JobID", "JobName", "State", "ExitCode"], [], "  ", True, 0
    while i < len(argv):
        arg, value = argv[i].partition("=")[0], argv[i].partition("=")[2]
        if arg in {"-o", "--format", "-j", "--jobs"} and not value:
            i += 1
            value = argv[i]
        if arg in {"-o", "--format"}:
            fields = value.split(",")
        elif arg in {"-j", "--jobs"}:
            jobs.append(value)
        elif arg in {"-P", "--parsable2", "-p", "--parsable"}:
            sep = "|"
        elif arg in {"-n", "--noheader"}:
            header = False
        i += 1
    rows = [sacct_row(job, index, fields) for job, index in sacct_tasks(split_ids(jobs))]
    lines = ([sep.join(fields)] if header else []) + [sep.join(row) for row in rows]
    print("\n".join(lines))
    return 0


def sacct_tasks(specs: list[str]) -> list[tuple[dict, str]]:
    """The tasks asked for (every task of every job when none was), each once, in order."""
    wanted = [t for spec in specs for t in resolve(spec)] if specs else \
        [(job["id"], i) for job in all_jobs() for i in job["tasks"]]
    jobs = {job_id: read_job(job_id) for job_id, _ in wanted}
    return [(jobs[job_id], index) for job_id, index in dict.fromkeys(wanted)]


def sacct_row(job: dict, index: str, fields: list[str]) -> list[str]:
    """One task's fields; unknown fields are empty."""
    task = job["tasks"][index]
    code = task["exit_code"]
    when = lambda times: time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(times[-1])) if times else "Unknown"
    values = {"JobID": f"{job['id']}_{index}" if job["array"] else job["id"], "JobIDRaw": task["raw_id"],
              "JobName": job["name"], "State": task["state"],
              "NodeList": "None assigned" if task["state"] == "PENDING" else "localhost",
              "ExitCode": "0:0" if code is None else f"{code}:0" if code >= 0 else f"0:{-code}",
              "Start": when(task["starts"]), "End": when(task["ends"]), "Reason": job["reason"] or "None",
              "Restarts": str(task["restart_count"])}
    return [values.get(field.split("%")[0], "") for field in fields]


# --- scancel and scontrol -----------------------------------------------------------------------
def main_scancel(argv: list[str]) -> int:
    """`scancel [--signal SIG] [-b] ID...`: signal the tasks' programs, or cancel (runner kills)."""
    log_call("scancel", argv)
    options, ids = parse_options(argv, {"-s": "signal", "-b": "batch"}, {"batch", "full", "quiet", "verbose"})
    tasks = [t for spec in split_ids(ids) for t in known(spec)]
    for job_id, index in tasks:
        if "signal" in options:
            send_signal(job_id, index, signal_name(options["signal"]), "scancel", bool(options.get("batch")))
        else:
            set_state(job_id, index, ACTIVE, "CANCELLED")
    return 0


def known(spec: str) -> list[tuple[str, str]]:
    """`resolve`, refusing unknown ids as SLURM does."""
    tasks = resolve(spec)
    if not tasks:
        raise SlurmError(f"Invalid job id specified: {spec}")
    return tasks


def main_scontrol(argv: list[str]) -> int:
    """`scontrol requeue ID[,ID]...`: a running task is ended and queued again (same ids)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the requeue it asks for ends its own task's group
    log_call("scontrol", argv)
    if not argv or argv[0] != "requeue" or len(argv) < 2:
        raise SlurmError(f"only `scontrol requeue <job id>` is emulated, not {shlex.join(argv)!r}")
    for job_id, index in [t for spec in split_ids(argv[1:]) for t in known(spec)]:
        if read_job(job_id)["tasks"][index]["state"] in TERMINAL:
            raise SlurmError(f"Requeue of {job_id}_{index}: the task has ended (not emulated)")
        set_state(job_id, index, {"RUNNING"}, "REQUEUED")
    return 0


def command_main(name: str) -> None:
    """Entry point of the wrappers: run `main_<name>`, a refusal is one line and exit status 1."""
    main = {"sbatch": main_sbatch, "sacct": main_sacct, "scancel": main_scancel,
            "scontrol": main_scontrol, "srun": main_srun}[name]
    try:
        sys.exit(main(sys.argv[1:]))
    except SlurmError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--run":
        runner = Runner(sys.argv[2])
        try:
            runner.run()
        except BaseException:
            runner.abandon()
            raise
    else:
        sys.exit("usage: _fake_slurm.py --run <job id> (started by sbatch)")
