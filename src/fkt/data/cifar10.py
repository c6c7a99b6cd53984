"""CIFAR-10 in its python layout (`cifar-10-batches-py/`: data_batch_1..5, test_batch, batches.meta).

Read directly rather than through torchvision, whose loader insists on the official
checksums (so a re-packed or generated copy of the same layout would not load).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from fkt.data.base import DataBundle, ImageSet
from fkt.errors import UserError

TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = ["test_batch"]


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
        pixels = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as err:
        raise UserError(f"{path}: not a CIFAR-10 batch ({type(err).__name__}: {err})") from None
    if len(pixels) != len(labels):
        raise UserError(f"{path}: {len(pixels)} images but {len(labels)} labels")
    return pixels, labels


def read_split(folder: Path, names: list[str]) -> ImageSet:
    parts = [read_batch(folder / name) for name in names]
    return ImageSet(targets=np.concatenate([p[1] for p in parts]), pixels=np.concatenate([p[0] for p in parts]))


def load(root: Path | None) -> DataBundle:
    if root is None:
        raise UserError("cifar10: --data-root is required (the folder holding cifar-10-batches-py/)")
    folder = root if root.name == "cifar-10-batches-py" else root / "cifar-10-batches-py"
    missing = [n for n in TRAIN + TEST + ["batches.meta"] if not (folder / n).is_file()]
    if missing:
        raise UserError(f"{folder}: missing {', '.join(missing)} (CIFAR-10 python layout)")
    with open(folder / "batches.meta", "rb") as handle:
        try:
            classes = list(pickle.load(handle, encoding="latin1")["label_names"])
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError) as err:
            raise UserError(f"{folder / 'batches.meta'}: unreadable ({type(err).__name__})") from None
    return DataBundle("cifar10", classes, read_split(folder, TRAIN), read_split(folder, TEST), source=str(folder))
