"""Decode each image file once. Decoding and resizing an APTOS-size PNG costs ~100 ms of a core, and
file-backed sets did it at every access, in every epoch and grid cell. Instead every file of a set is
decoded once, in threads, into one raw uint8 file that later runs, grid cells and DDP ranks memory-map
(paged, never copied, so sets larger than memory work). Cache files are data, never code: raw bytes
and JSON, no pickle."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from fkt.data.base import DataBundle, ImageSet, read_rgb, resized_rgb
from fkt.data.scan import check_image, one_line
from fkt.errors import UserError
from fkt.io import new_file_mode

FORMAT = 1  # part of the key: a new layout or resize never opens an old cache
PROGRESS_EVERY = 10.0  # seconds between progress lines while building
FULL_DISK = {errno.ENOSPC, errno.EDQUOT}
NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


class CachedPixels:
    """Read-only rows of a cache. Indexing with an array composes row numbers instead of copying, so
    subsets of a set larger than memory stay paged; an integer gives one (side, side, 3) image."""

    def __init__(self, array: np.memmap, rows: np.ndarray, reasons: dict[int, str]) -> None:
        self.array, self.rows, self.reasons = array, rows, reasons

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.array.shape[1:])

    def __getitem__(self, index):
        rows = self.rows[index]
        return self.array[rows] if np.ndim(rows) == 0 else CachedPixels(self.array, rows, self.reasons)

    def reason(self, index: int) -> str | None:
        """Why the file of row `index` could not be decoded (its row is zeros), or None."""
        return self.reasons.get(int(self.rows[index]))

    def __getstate__(self) -> dict:  # a spawned loader worker maps the file again rather than get a copy
        return {"path": self.array.filename, "shape": self.array.shape, "rows": self.rows, "reasons": self.reasons}

    def __setstate__(self, state: dict) -> None:
        self.__init__(np.memmap(state["path"], np.uint8, "r", shape=state["shape"]), state["rows"], state["reasons"])


class Damaged(Exception):
    """A cache that is there but cannot be trusted: it is rebuilt."""


def cache_folder(configured: Path | None) -> Path:
    """data.cache_dir, else $FKT_CACHE, else ~/.cache/fkt/images: one cache for every run of this user,
    apart from the Fashion-MNIST download in ~/.cache/fkt, so clearing it loses only decoded images."""
    return Path(configured or os.environ.get("FKT_CACHE") or Path.home() / ".cache" / "fkt" / "images").expanduser()


def file_entries(files: list[Path], targets: np.ndarray) -> list[dict]:
    """Each file as the key sees it, so that a changed, added or removed file makes a new cache."""
    entries = []
    for path, label in zip(files, targets):
        try:
            stat = os.stat(path)
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:  # missing or a broken link: listed as bad, and a new key once it is there
            size = mtime = -1
        entries.append({"path": os.path.abspath(path), "size": size, "mtime_ns": mtime, "label": int(label)})
    return entries


def cache_key(entries: list[dict], side: int) -> str:
    listed = [[entry["path"], entry["size"], entry["mtime_ns"]] for entry in entries]
    return hashlib.sha256(json.dumps([FORMAT, side, listed], separators=(",", ":")).encode()).hexdigest()[:32]


def checksum(index: dict) -> str:
    body = {name: value for name, value in index.items() if name != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def size_text(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.2f} MB"


def open_cache(data: Path, index_path: Path, key: str, side: int, n: int) -> CachedPixels | None:
    """The finished cache, or None where there is none yet; Damaged where it is there but wrong."""
    if not index_path.exists():
        return None
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as err:
        raise Damaged(index_path, f"unreadable index: {one_line(err)}") from None
    if not isinstance(index, dict) or index.get("sha256") != checksum(index):
        raise Damaged(index_path, "index checksum mismatch")
    if [index.get(name) for name in ("format", "key", "side", "n")] != [FORMAT, key, side, n]:
        raise Damaged(index_path, "the index of another cache")
    expected = n * side * side * 3
    size = data.stat().st_size if data.exists() else None
    if size != expected:
        raise Damaged(data, f"data file {'missing' if size is None else f'of {size:,} bytes'}, expected {expected:,}")
    array = np.memmap(data, np.uint8, "r", shape=(n, side, side, 3))
    return CachedPixels(array, np.arange(n), {int(bad["row"]): bad["reason"] for bad in index["bad"]})


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive flock, so one process builds and the others then open what it built. The kernel
    drops it when its holder dies: a killed build never blocks the next."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[fkt] waiting for another process to build the image cache ({path})", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def preallocate(fd: int, nbytes: int) -> None:
    """Claim the whole data file at the start: a full disk then fails here, in one line, rather than as
    a crash (SIGBUS) on a memory-mapped write hours in."""
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        os.ftruncate(fd, nbytes)  # a file system without fallocate


def decode_all(files: list[Path], pixels: np.memmap, side: int) -> dict[int, str]:
    """Each file decoded and resized into its row, in threads (Pillow releases the GIL while it decodes
    and resizes); the reason for each that fails, in the scan's words. A failed row stays zeros."""
    def decode(row: int) -> str | None:
        try:
            pixels[row] = resized_rgb(read_rgb(files[row], side), side)
        except Exception as err:  # noqa: BLE001 - broken files raise OSError, SyntaxError, ValueError, struct.error...
            return check_image(Path(files[row])) or one_line(err)
        return None

    reasons: dict[int, str] = {}
    start = said = time.monotonic()
    pool = ThreadPoolExecutor(min(32, 2 * len(os.sched_getaffinity(0))))
    try:
        for row, reason in enumerate(pool.map(decode, range(len(files)))):
            if reason is not None:
                reasons[row] = reason
            if time.monotonic() - said >= PROGRESS_EVERY:
                said = time.monotonic()
                print(f"[fkt] image cache: {row + 1:,} of {len(files):,} images "
                      f"({(row + 1) / (said - start):,.0f} images/s)", flush=True)
    finally:
        pool.shutdown(cancel_futures=True)  # Ctrl-C: stop at once, not after every file
    return reasons


def temp_file(folder: Path, key: str) -> str:
    """A new temp file in the cache folder, readable by colleagues who share the cache (mkstemp: 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=folder)
    os.fchmod(fd, new_file_mode())
    os.close(fd)
    return tmp


def write_synced(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def build(files: list[Path], entries: list[dict], side: int, folder: Path, key: str) -> None:
    """Decode into temp files, then rename the data and, last, the index: an index means a complete
    cache, and a full disk or a kill leaves only temp files, which the next build removes first (only
    the lock holder writes them)."""
    for stale in folder.glob(f".{key}.*.tmp"):
        stale.unlink(missing_ok=True)
    n, data, nbytes = len(files), folder / f"{key}.uint8", len(files) * side * side * 3
    print(f"[fkt] building the image cache {data}: {n:,} images at {side} px, {size_text(nbytes)} "
          "(--no-cache reads the files instead)", flush=True)
    start, temps = time.monotonic(), []
    try:
        temps.append(temp_file(folder, key))
        with open(temps[0], "r+b") as handle:
            preallocate(handle.fileno(), nbytes)
        pixels = np.memmap(temps[0], np.uint8, "r+", shape=(n, side, side, 3))
        reasons = decode_all(files, pixels, side)
        pixels.flush()
        del pixels
        index = {"format": FORMAT, "key": key, "side": side, "n": n, "files": entries,
                 "bad": [{"row": row, "path": entries[row]["path"], "reason": why} for row, why in reasons.items()]}
        temps.append(temp_file(folder, key))
        write_synced(temps[1], json.dumps({**index, "sha256": checksum(index)}) + "\n")
        os.replace(temps[0], data)
        os.replace(temps[1], folder / f"{key}.json")
    finally:
        for tmp in temps:
            Path(tmp).unlink(missing_ok=True)
    seconds = time.monotonic() - start
    print(f"[fkt] image cache built: {n:,} images in {seconds:.1f} s ({n / max(seconds, 1e-9):,.0f} images/s)",
          flush=True)


def free_bytes(folder: Path) -> int:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def cache_error(err: OSError, folder: Path, need: int) -> Exception:
    """A full or unwritable cache folder as one line that says what to do; anything else unchanged."""
    fixes = "point data.cache_dir or $FKT_CACHE at another folder, or pass --no-cache"
    if err.errno in FULL_DISK:
        return UserError(f"{folder}: no space left for the image cache ({size_text(need)} needed, "
                         f"{size_text(free_bytes(folder))} free); free some space, {fixes}")
    if err.errno in NOT_WRITABLE:
        return UserError(f"{folder}: cannot write the image cache ({err.strerror}); {fixes}")
    return err


def cached_pixels(images: ImageSet, side: int, folder: Path) -> CachedPixels:
    """The set's images at `side` px from the cache, built first where there is none (or a damaged one).
    Checked again under the lock: two runs needing the same cache build it once."""
    entries = file_entries(images.files, images.targets)
    key = cache_key(entries, side)
    data, index = folder / f"{key}.uint8", folder / f"{key}.json"
    try:
        found = open_cache(data, index, key, side, len(entries))
    except Damaged:
        found = None  # said and rebuilt under the lock, by whichever process takes it first
    if found is not None:
        return found
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with locked(folder / f"{key}.lock"):
            try:
                found = open_cache(data, index, key, side, len(entries))
            except Damaged as err:
                print(f"[fkt] {err.args[0]}: damaged image cache ({err.args[1]}); rebuilding", flush=True)
            if found is None:
                build(images.files, entries, side, folder, key)
                found = open_cache(data, index, key, side, len(entries))
    except OSError as err:
        raise cache_error(err, folder, len(entries) * side * side * 3) from None
    return found


def cache_bundle(bundle: DataBundle, side: int, folder: Path) -> list[tuple[Path, str]]:
    """Every file-backed set of `bundle` swapped for one read from the cache (its files kept, so reports
    name them). Returns the files that could not be decoded, (path, reason), in the scan's order."""
    bad: list[tuple[Path, str]] = []
    for name in ("train", "test", "unlabelled"):
        images = getattr(bundle, name)
        if images is None or not images.files or images.pixels is not None:
            continue
        pixels = cached_pixels(images, side, folder)
        setattr(bundle, name, ImageSet(targets=images.targets, pixels=pixels, files=images.files))
        bad += [(images.files[row], reason) for row, reason in sorted(pixels.reasons.items())]
    return bad
