"""Fashion-MNIST, the offline default: IDX files from Debian's `dataset-fashion-mnist`."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from fkt.data.base import DataBundle, ImageSet
from fkt.errors import UserError

SYSTEM_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST file format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as err:
        raise UserError(f"{path}: cannot read IDX file ({err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise UserError(f"{path}: truncated IDX file ({len(data) - offset} bytes for shape {dims})")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def find_file(root: Path, stem: str) -> Path | None:
    for candidate in (root / stem, root / f"{stem}.gz", root / "FashionMNIST" / "raw" / stem,
                      root / "FashionMNIST" / "raw" / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def locate(root: Path | None) -> Path | None:
    """The first folder holding all four IDX files: `root`, else the Debian package's folder.

    A `root` holding some of the files but not all is a broken copy: an error, rather than
    silently reading another copy (or downloading the rest next to it)."""
    if root is not None:
        stems = [stem for pair in FILES.values() for stem in pair]
        missing = [stem for stem in stems if find_file(root, stem) is None]
        if missing and len(missing) < len(stems):
            raise UserError(f"{root}: incomplete Fashion-MNIST copy, missing {', '.join(m + '[.gz]' for m in missing)}")
    for folder in ([root] if root is not None else []) + [SYSTEM_ROOT]:
        if all(find_file(folder, stem) for pair in FILES.values() for stem in pair):
            return folder
    return None


def download(root: Path) -> Path:
    import torchvision

    try:
        torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
        torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
    except Exception as err:  # noqa: BLE001 - any network failure means the same thing to the user
        raise UserError(
            f"fashion-mnist: not found in {root} or {SYSTEM_ROOT}, and the download failed ({type(err).__name__}); "
            "install it offline with: apt-get install dataset-fashion-mnist"
        ) from None
    return root


def load(root: Path | None) -> DataBundle:
    folder = locate(root)
    if folder is None:
        folder = download(root or Path.home() / ".cache" / "fkt" / "fashion-mnist")
    splits = {}
    for split, (images, labels) in FILES.items():
        pixels = read_idx(find_file(folder, images))
        targets = read_idx(find_file(folder, labels))
        if len(pixels) != len(targets):
            raise UserError(f"{folder}: {split} has {len(pixels)} images but {len(targets)} labels")
        splits[split] = ImageSet(targets=targets, pixels=pixels)
    return DataBundle("fashion-mnist", CLASSES, splits["train"], splits["test"], source=str(folder))
