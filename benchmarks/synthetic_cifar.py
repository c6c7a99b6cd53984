"""A generated stand-in for CIFAR-10, in the real python-batch layout, for machines without datasets.

    python benchmarks/synthetic_cifar.py DIR [--train-per-class 5000] [--test-per-class 1000] [--seed 0]

writes DIR/cifar-10-batches-py/ with data_batch_1..5, test_batch and batches.meta, as the real
files are: protocol-2 pickles whose keys are Python 2 strings (so `pickle.load(f,
encoding="bytes")` gives b"data" (N, 3072) uint8 rows, R plane then G then B, b"labels" and
b"label_names", and `encoding="latin1"` gives "data", ... as fkt's `cifar10` loader reads them).
`fkt train --dataset cifar10 --data-root DIR` then trains on it.

Each class is a pattern, not noise: a sinusoidal grating whose orientation and tint are the
class's (with a random phase, frequency, contrast and a little jitter in angle and colour per
image) over a grey level leaning towards the tint, plus pixel noise, so that a network learns
it within an epoch.
"""

from __future__ import annotations

import argparse
import pickle
import struct
import sys
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TINTS = np.array([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.2, 1.0], [1.0, 1.0, 0.2], [1.0, 0.2, 1.0],
                  [0.2, 1.0, 1.0], [1.0, 0.6, 0.2], [0.6, 0.2, 1.0], [0.2, 0.6, 1.0], [0.8, 0.8, 0.8]])


class Py2Str(bytes):
    """Pickled as a Python 2 `str` (BINSTRING), as in the real CIFAR files."""


class Py2Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table can be extended
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + bytes(obj))
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + bytes(obj))
        self.memoize(obj)

    dispatch[Py2Str] = save_py2_str
    dispatch[bytes] = save_py2_str  # numpy's raw array data too, as Python 2 wrote it


def py2(value):
    """Strings (keys, names) as Python 2 strings, recursively."""
    if isinstance(value, str):
        return Py2Str(value.encode("latin1"))
    if isinstance(value, dict):
        return {py2(k): py2(v) for k, v in value.items()}
    if isinstance(value, list):
        return [py2(v) for v in value]
    return value


def dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as handle:
        Py2Pickler(handle, protocol=2).dump(py2(obj))


def images(labels: np.ndarray, rng: np.random.Generator, chunk: int = 5000) -> np.ndarray:
    """(N, 32, 32, 3) uint8 HWC: per-class grating orientation and tint, random phase/frequency/contrast."""
    y, x = np.mgrid[0:32, 0:32].astype(np.float32)
    out = np.empty((len(labels), 32, 32, 3), dtype=np.uint8)
    for lo in range(0, len(labels), chunk):
        c = labels[lo:lo + chunk]
        n = len(c)
        angle = (c * np.pi / len(CLASSES) + rng.normal(0, 0.06, n)).astype(np.float32)
        freq = rng.uniform(2.0, 4.0, n).astype(np.float32) / 32
        phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
        contrast = rng.uniform(50, 100, n).astype(np.float32)
        u = x[None] * np.cos(angle)[:, None, None] + y[None] * np.sin(angle)[:, None, None]
        grating = np.sin(2 * np.pi * freq[:, None, None] * u + phase[:, None, None])
        tint = np.clip(TINTS[c] + rng.normal(0, 0.1, (n, 3)), 0, 1).astype(np.float32)
        # a grey level per image, shifted towards the class's tint (a mild colour cue, as in real photos)
        base = rng.uniform(80, 140, (n, 1, 1, 1)).astype(np.float32) + 30 * (tint[:, None, None, :] - 0.5)
        pixels = base + contrast[:, None, None, None] * grating[..., None] * tint[:, None, None, :]
        pixels += rng.normal(0, 12, pixels.shape).astype(np.float32)
        out[lo:lo + n] = np.clip(pixels, 0, 255).round().astype(np.uint8)
    return out


def rows(pixels: np.ndarray) -> np.ndarray:
    """HWC images -> CIFAR rows of 3072 bytes: the R plane, then G, then B, each row-major."""
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2).reshape(len(pixels), 3072))


def write(root: Path, train_per_class: int, test_per_class: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train = rng.permutation(np.repeat(np.arange(len(CLASSES)), train_per_class))
    test = rng.permutation(np.repeat(np.arange(len(CLASSES)), test_per_class))
    bounds = np.linspace(0, len(train), 6).round().astype(int)
    for b in range(5):
        labels = train[bounds[b]:bounds[b + 1]]
        dump(folder / f"data_batch_{b + 1}", {
            "batch_label": f"training batch {b + 1} of 5", "labels": [int(v) for v in labels],
            "data": rows(images(labels, rng)), "filenames": [f"synthetic_{bounds[b] + i:05d}.png"
                                                             for i in range(len(labels))]})
    dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": [int(v) for v in test],
                                 "data": rows(images(test, rng)),
                                 "filenames": [f"synthetic_test_{i:05d}.png" for i in range(len(test))]})
    dump(folder / "batches.meta", {"label_names": CLASSES, "num_cases_per_batch": int(bounds[1]), "num_vis": 3072})
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder to write cifar-10-batches-py/ into")
    parser.add_argument("--train-per-class", type=int, default=5000)
    parser.add_argument("--test-per-class", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.train_per_class < 1 or args.test_per_class < 1:
        parser.error("--train-per-class and --test-per-class must be at least 1")
    folder = write(args.root, args.train_per_class, args.test_per_class, args.seed)
    print(f"wrote {folder}: {10 * args.train_per_class} training and {10 * args.test_per_class} test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
