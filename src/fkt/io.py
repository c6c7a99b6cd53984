"""Atomic file writes: a kill or a full disk mid-write leaves the previous good file, never a torn one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def new_file_mode() -> int:
    """The mode open() gives a new file under this process's umask. mkstemp makes 0600 files, which
    colleagues sharing a results folder could not read."""
    try:  # Linux says it outright; os.umask can only be read by setting it, which races with threads
        with open("/proc/self/status") as status:
            umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o22)
        os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write through a temp file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from err  # name the file, not the temp
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


LAUNCH_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK", "GROUP_RANK")


def is_rank_zero() -> bool:
    """The process that owns the run directory: rank 0 under torchrun, SLURM and Lightning's launcher."""
    return all(os.environ.get(name, "0") == "0" for name in LAUNCH_RANK_VARIABLES)


class RunLock:
    """An exclusive lock on a run directory, so two runs never write into the same `--out`.

    flock is released by the kernel when the holder dies, SIGKILL included: a stale lock file
    never blocks the rerun that resumes a killed run.
    """

    def __init__(self, folder: Path, what: str = "--out") -> None:
        self.path = Path(folder) / ".fkt.lock"
        self.what = what
        self._handle: Any = None

    def __enter__(self) -> "RunLock":
        import fcntl

        from fkt.errors import UserError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(f"{self.what} {self.path.parent}: in use by another fkt run ({holder}); "
                            "wait for it to finish or choose another folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.close()  # releases the lock; the file stays (harmless, reused next time)
            self._handle = None
