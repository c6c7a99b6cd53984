"""Shared fixtures: small datasets GENERATED in each real on-disk layout.

Each `make_*` function writes real files (gzipped IDX, pickled CIFAR batches, JPEG/PNG images,
a Kaggle CSV) under `root` and returns a `Generated` record of what a loader should give back:
class names in the loader's order, labels in the loader's order, and (for the in-memory formats)
the exact pixel arrays written. `Generated` is path-like, so it can be passed as a data root.

Every image carries its class in its colour: the red channel is `class_value(label, n)` all over
the image (JPEG keeps a flat colour to within a few levels), so `label_of(image, n)` reads the
label back from the loaded pixels and a test can check that labels match the files.

Fixtures:
  fkt_cli(*args, cwd=None) -> CompletedProcess   `fkt ARGS` through cli.main, in this process
  image_cache -> Path   (autouse) this test's own $FKT_CACHE folder

Helpers (import from conftest): one_error_line(result, *needles, code=None)
  make_dataset(name, **kwargs) -> Generated   each call in a fresh temporary folder
  fashion_mnist_data, cifar10_data, intel_image_data, aptos_data,
  imagefolder_data (train/ + test/), imagefolder_no_test_data   small defaults
"""

from __future__ import annotations

import csv
import gzip
import pickle
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pytest
from PIL import Image

INTEL_CLASSES = ["buildings", "forest", "glacier", "mountain", "sea", "street"]
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Deliberately not in sorted order (and mixed case), so loaders must sort them themselves.
FOLDER_NAMES = ["zebra", "Apple", "mango", "kiwi", "banana", "cherry", "Date", "fig", "grape", "lemon",
                "lime", "melon", "nectarine", "olive", "peach", "pear"]
# (mode, extension) of the images an imagefolder tree cycles through.
DEFAULT_FORMATS = (("RGB", ".png"), ("L", ".png"), ("P", ".png"), ("RGBA", ".png"), ("RGB", ".jpg"),
                   ("LA", ".png"), ("RGB", ".bmp"))


@dataclass
class Generated:
    """What a loader should return for a generated dataset (labels in the loader's order)."""

    root: Path
    classes: list[str]
    train_labels: list[int]
    test_labels: list[int] | None
    train_pixels: np.ndarray | None = None  # exact arrays written (IDX, CIFAR), in order
    test_pixels: np.ndarray | None = None
    train_files: list[Path] | None = None  # files in the order the loader lists them
    test_files: list[Path] | None = None
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # file name -> (width, height)

    def __fspath__(self) -> str:
        return str(self.root)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# --------------------------------------------------------------------------- colours and labels

def class_value(label: int, num_classes: int) -> int:
    """The red level that marks class `label` (evenly spread over 30..225)."""
    if num_classes <= 1:
        return 128
    return int(round(30 + label * 195 / (num_classes - 1)))


def label_of(image: Image.Image | np.ndarray, num_classes: int) -> int:
    """The class whose `class_value` is nearest the image's mean red (or grey) level."""
    arr = np.asarray(image, dtype=np.float64)
    red = arr[..., 0] if arr.ndim == 3 else arr
    level = red.mean()
    return int(np.argmin([abs(class_value(c, num_classes) - level) for c in range(num_classes)]))


def colour_image(label: int, num_classes: int, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A flat image of class `label`: RGB (v, 255-v, 128) in the given PIL mode; (width, height) size."""
    v = class_value(label, num_classes)
    rgb = (v, 255 - v, 128)
    if mode == "RGB":
        return Image.new("RGB", size, rgb)
    if mode == "L":
        return Image.new("L", size, v)
    if mode == "LA":
        return Image.new("LA", size, (v, 200))
    if mode == "RGBA":
        return Image.new("RGBA", size, (*rgb, 100))  # translucent: converting must drop alpha, keep colour
    if mode == "P":
        img = Image.new("P", size, 1)
        img.putpalette([0, 0, 0, *rgb] + [0] * (256 * 3 - 6))
        return img
    if mode == "CMYK":
        return Image.new("RGB", size, rgb).convert("CMYK")
    raise ValueError(f"unsupported mode {mode}")


def _per_class(value: int | Sequence[int], num_classes: int) -> list[int]:
    counts = [value] * num_classes if isinstance(value, int) else list(value)
    if len(counts) != num_classes:
        raise ValueError(f"{len(counts)} counts for {num_classes} classes")
    return counts


def _shuffled_labels(counts: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    labels = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(labels)
    return labels


# --------------------------------------------------------------------------- Fashion-MNIST (IDX)

def write_idx(path: Path, array: np.ndarray) -> Path:
    """An unsigned-byte IDX file (gzipped when the name ends in .gz): magic 0x0000080N, big-endian dims."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = struct.pack(">I", 0x00000800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb", compresslevel=1) as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)
    return path


def idx_pixels(labels: np.ndarray, image_size: int, num_classes: int) -> np.ndarray:
    """Grey images at the class level; row 0 is a ramp that starts at the image's index (order check)."""
    pixels = np.empty((len(labels), image_size, image_size), dtype=np.uint8)
    for i, label in enumerate(labels):
        pixels[i] = class_value(int(label), num_classes)
        pixels[i, 0, :] = (i + 5 * np.arange(image_size)) % 256
    return pixels


def make_fashion_mnist(root: Path, num_classes: int = 10, train_per_class: int | Sequence[int] = 3,
                       test_per_class: int | Sequence[int] = 2, image_size: int = 28, gz: bool = True,
                       seed: int = 0) -> Generated:
    """`{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` directly in `root` (labels shuffled)."""
    if not 1 <= num_classes <= 10:
        raise ValueError("Fashion-MNIST labels are 0-9")
    from fkt.data.fashion_mnist import CLASSES

    rng = np.random.default_rng(seed)
    root = Path(root)
    suffix = ".gz" if gz else ""
    out = {}
    for split, prefix, per_class in (("train", "train", train_per_class), ("test", "t10k", test_per_class)):
        labels = _shuffled_labels(_per_class(per_class, num_classes), rng)
        pixels = idx_pixels(labels, image_size, num_classes)
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", pixels)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels.astype(np.uint8))
        out[split] = (labels, pixels)
    return Generated(root, list(CLASSES), out["train"][0].tolist(), out["test"][0].tolist(),
                     train_pixels=out["train"][1], test_pixels=out["test"][1])


# --------------------------------------------------------------------------- CIFAR-10 (pickles)

def cifar_pixels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(N,32,32,3) HWC RGB: R = class level, G = 255 - R, B[y,x] = (7y + 3x + i) % 256."""
    y, x = np.mgrid[0:32, 0:32]
    pixels = np.empty((len(labels), 32, 32, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        v = class_value(int(label), num_classes)
        pixels[i, ..., 0] = v
        pixels[i, ..., 1] = 255 - v
        pixels[i, ..., 2] = (7 * y + 3 * x + i) % 256
    return pixels


def write_cifar_batch(path: Path, pixels: np.ndarray, labels: np.ndarray, name: str) -> None:
    """One python-layout batch: 'data' (N,3072) uint8, the R plane then G then B, each row-major."""
    data = pixels.transpose(0, 3, 1, 2).reshape(len(pixels), 3072)
    entry = {"batch_label": name, "labels": [int(v) for v in labels], "data": np.ascontiguousarray(data),
             "filenames": [f"img_{i:05d}.png" for i in range(len(labels))]}
    with open(path, "wb") as handle:
        pickle.dump(entry, handle, protocol=2)


def make_cifar10(root: Path, num_classes: int = 10, train_per_class: int | Sequence[int] = 3,
                 test_per_class: int | Sequence[int] = 2, seed: int = 0) -> Generated:
    """`root/cifar-10-batches-py/` with data_batch_1..5 (train shuffled and dealt out), test_batch, batches.meta.

    CIFAR images are always 32x32 (3072 bytes a row), so there is no size parameter."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    classes = (CIFAR_CLASSES + [f"class_{i}" for i in range(10, num_classes)])[:num_classes]
    train_labels = _shuffled_labels(_per_class(train_per_class, num_classes), rng)
    test_labels = _shuffled_labels(_per_class(test_per_class, num_classes), rng)
    train_pixels, test_pixels = cifar_pixels(train_labels, num_classes), cifar_pixels(test_labels, num_classes)
    bounds = np.linspace(0, len(train_labels), 6).round().astype(int)  # five consecutive chunks
    for b in range(5):
        part = slice(bounds[b], bounds[b + 1])
        write_cifar_batch(folder / f"data_batch_{b + 1}", train_pixels[part], train_labels[part],
                          f"training batch {b + 1} of 5")
    write_cifar_batch(folder / "test_batch", test_pixels, test_labels, "testing batch 1 of 1")
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": classes, "num_cases_per_batch": int(bounds[1]), "num_vis": 3072}, handle,
                    protocol=2)
    return Generated(Path(root), classes, train_labels.tolist(), test_labels.tolist(),
                     train_pixels=train_pixels, test_pixels=test_pixels)


# --------------------------------------------------------------------------- class-folder trees

def write_class_tree(folder: Path, classes: list[str], per_class: list[int],
                     size_of: Callable[[int, int], tuple[int, int]],
                     format_of: Callable[[int, int], tuple[str, str]],
                     sizes: dict[str, tuple[int, int]]) -> tuple[list[int], list[Path]]:
    """`folder/<class>/<i><ext>`; `classes` in sorted order (label = position). Returns labels, files in order."""
    labels, files = [], []
    for label, (name, count) in enumerate(zip(classes, per_class)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            mode, ext = format_of(label, i)
            size = size_of(label, i)
            path = folder / name / f"{i:04d}{ext}"
            img = colour_image(label, len(classes), size, mode)
            img.save(path, quality=95) if ext in (".jpg", ".jpeg") else img.save(path)
            sizes[str(path)] = size
            labels.append(label)
            files.append(path)
    return labels, files


def make_intel_image(root: Path, classes: Sequence[str] = INTEL_CLASSES, train_per_class: int | Sequence[int] = 3,
                     test_per_class: int | Sequence[int] = 2, image_size: int = 150, odd_every: int = 4,
                     nested: bool = True, with_pred: bool = True) -> Generated:
    """Kaggle layout: `seg_train/seg_train/<class>/*.jpg`, `seg_test/seg_test/<class>/*.jpg` (and an
    unlabelled `seg_pred/seg_pred/*.jpg`). Every `odd_every`-th image is `image_size` wide but shorter,
    as a few real ones are; `nested=False` writes the flattened `seg_train/<class>` form."""
    root = Path(root)
    classes = sorted(classes)
    n = len(classes)
    sizes: dict[str, tuple[int, int]] = {}

    def size_of(label: int, i: int) -> tuple[int, int]:
        if odd_every and i % odd_every == odd_every - 1:
            return image_size, max(1, image_size * 3 // 4 + label)
        return image_size, image_size

    out = {}
    for split, per_class in (("seg_train", train_per_class), ("seg_test", test_per_class)):
        folder = root / split / split if nested else root / split
        out[split] = write_class_tree(folder, classes, _per_class(per_class, n), size_of,
                                      lambda label, i: ("RGB", ".jpg"), sizes)
    if with_pred:
        pred = root / "seg_pred" / "seg_pred"
        pred.mkdir(parents=True, exist_ok=True)
        for i in range(2):
            colour_image(0, n, (image_size, image_size)).save(pred / f"{i}.jpg")
    return Generated(root, classes, out["seg_train"][0], out["seg_test"][0], train_files=out["seg_train"][1],
                     test_files=out["seg_test"][1], sizes=sizes)


def make_imagefolder(root: Path, num_classes: int = 3, train_per_class: int | Sequence[int] = 4,
                     test_per_class: int | Sequence[int] | None = 2, image_size: int = 16,
                     formats: Sequence[tuple[str, str]] = DEFAULT_FORMATS,
                     class_names: Sequence[str] | None = None) -> Generated:
    """`train/<class>/<image>` and, unless `test_per_class` is None, `test/<class>/<image>`.

    Images cycle through `formats` ((PIL mode, extension): RGB, grayscale, palette, RGBA, ... as
    PNG/JPEG/BMP). A README.txt and a .DS_Store that are not images are dropped in as well."""
    root = Path(root)
    names = list(class_names) if class_names is not None else FOLDER_NAMES[:num_classes]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    classes = sorted(names)
    sizes: dict[str, tuple[int, int]] = {}

    def format_of(label: int, i: int) -> tuple[str, str]:
        return formats[(label + i) % len(formats)]

    def size_of(label: int, i: int) -> tuple[int, int]:
        return image_size + (i % 3), image_size + (label % 2)

    train_labels, train_files = write_class_tree(root / "train", classes, _per_class(train_per_class, num_classes),
                                                 size_of, format_of, sizes)
    (root / "train" / "README.txt").write_text("not an image\n")
    (root / "train" / classes[0] / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    test_labels = test_files = None
    if test_per_class is not None:
        test_labels, test_files = write_class_tree(root / "test", classes, _per_class(test_per_class, num_classes),
                                                   size_of, format_of, sizes)
    return Generated(root, classes, train_labels, test_labels, train_files=train_files, test_files=test_files,
                     sizes=sizes)


# --------------------------------------------------------------------------- APTOS 2019 (CSV + PNGs)

def make_aptos(root: Path, images_per_class: int | Sequence[int] = 3, image_size: int = 24,
               sizes: Sequence[tuple[int, int]] | None = None, seed: int = 0, bom: bool = False) -> Generated:
    """Kaggle layout: `train.csv` (id_code,diagnosis 0-4, rows shuffled) and `train_images/<id_code>.png`
    of varying (width, height) sizes (cycled from `sizes`, default around `image_size`)."""
    from fkt.data.aptos import CLASSES

    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "train_images").mkdir(parents=True, exist_ok=True)
    sizes = list(sizes or [(image_size, image_size), (image_size + 10, image_size - 4),
                           (image_size - 6, image_size + 8), (2 * image_size, image_size + 3)])
    labels = _shuffled_labels(_per_class(images_per_class, 5), rng)
    codes = [f"{int(v):012x}" for v in rng.choice(16 ** 8, size=len(labels), replace=False)]
    written: dict[str, tuple[int, int]] = {}
    files = []
    with open(root / "train.csv", "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id_code", "diagnosis"])
        for i, (code, label) in enumerate(zip(codes, labels)):
            writer.writerow([code, int(label)])
            size = sizes[i % len(sizes)]
            path = root / "train_images" / f"{code}.png"
            colour_image(int(label), 5, size).save(path)
            written[str(path)] = size
            files.append(path)
    return Generated(root, list(CLASSES), labels.tolist(), None, train_files=files, sizes=written)


MAKERS: dict[str, Callable[..., Generated]] = {
    "fashion-mnist": make_fashion_mnist,
    "cifar10": make_cifar10,
    "intel-image": make_intel_image,
    "aptos2019": make_aptos,
    "imagefolder": make_imagefolder,
}


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session", autouse=True)
def session_image_cache(tmp_path_factory) -> Iterator[Path]:
    """$FKT_CACHE for module- and session-scoped fixtures, which run before any test's own
    `image_cache`: no test run writes to ~/.cache."""
    folder = tmp_path_factory.mktemp("fkt_cache_session")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FKT_CACHE", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def image_cache(tmp_path_factory, monkeypatch) -> Path:
    """Each test its own image cache folder ($FKT_CACHE): none writes to ~/.cache or shares one by accident."""
    folder = tmp_path_factory.mktemp("fkt_cache")
    monkeypatch.setenv("FKT_CACHE", str(folder))
    return folder


@pytest.fixture
def make_dataset(tmp_path_factory) -> Callable[..., Generated]:
    """`make_dataset(name, **kwargs)`: a dataset in the layout `name` (a key of fkt.data.DATASETS),
    generated in a fresh temporary folder; kwargs go to the matching `make_*` function."""

    def make(name: str, **kwargs) -> Generated:
        root = tmp_path_factory.mktemp(name.replace("-", "_"))
        return MAKERS[name](root, **kwargs)

    return make


@pytest.fixture
def fashion_mnist_data(tmp_path) -> Generated:
    return make_fashion_mnist(tmp_path / "fashion-mnist")


@pytest.fixture
def cifar10_data(tmp_path) -> Generated:
    return make_cifar10(tmp_path / "cifar10")


@pytest.fixture
def intel_image_data(tmp_path) -> Generated:
    return make_intel_image(tmp_path / "intel")


@pytest.fixture
def aptos_data(tmp_path) -> Generated:
    return make_aptos(tmp_path / "aptos")


@pytest.fixture
def imagefolder_data(tmp_path) -> Generated:
    return make_imagefolder(tmp_path / "folder")


@pytest.fixture
def imagefolder_no_test_data(tmp_path) -> Generated:
    return make_imagefolder(tmp_path / "folder", test_per_class=None)


# --------------------------------------------------------------------------- bad image files

# What `fkt.data.scan.check_image` says about each kind `write_bad_image` writes (the start of it).
BAD_REASONS = {"truncated": "truncated or corrupt", "empty": "empty file (0 bytes)", "text": "not an image",
               "broken-symlink": "broken symlink"}


def write_bad_image(path: Path, kind: str) -> Path:
    """An unusable file under an image name. `truncated`: the first half of a real noisy image in the
    format its suffix names; `empty`: 0 bytes; `text`: a text file; `broken-symlink`: a link to nothing."""
    import io

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "truncated":
        noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, format=Image.registered_extensions()[path.suffix.lower()])
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("these are my notes, not an image\n")
    elif kind == "broken-symlink":
        path.symlink_to(path.parent / f"deleted-{path.name}")
    else:
        raise ValueError(f"unknown kind {kind!r}; choose from {sorted(BAD_REASONS)}")
    return path


@pytest.fixture
def fkt_cli(capsys, monkeypatch) -> Callable[..., subprocess.CompletedProcess]:
    """`fkt ARGS` through `fkt.cli.main` in this process: the exit code, stdout and stderr a
    user sees, without an interpreter's start-up (seconds) per case. A few tests still run
    `python -m fkt` in a subprocess, for the entry point itself."""
    from fkt import cli

    def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            code = cli.main(list(args))
        except SystemExit as stop:  # argparse's own exits
            code = stop.code
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(["fkt", *args], code, captured.out, captured.err)

    return run


def one_error_line(result: subprocess.CompletedProcess, *needles: str, code: int | None = None) -> str:
    """A user mistake's stderr: one line, no traceback, every needle in it; the exit code is `code`
    (or any failure)."""
    if code is None:
        assert result.returncode != 0, result.stderr[-3000:]
    else:
        assert result.returncode == code, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def folder_grid(root: Path, trainer: dict, grid: dict, **sections):
    """A tiny `fkt reproduce` config on an image-folder layout at 32 px, batch 8, on the CPU."""
    from fkt.config import build_config

    return build_config({
        "data": {"dataset": "imagefolder", "root": str(root), "image_size": 32, "batch_size": 8,
                 "val_fraction": 0.25, "num_workers": 0},
        "trainer": {"accelerator": "cpu", "progress_bar": False, **trainer}, "grid": grid, **sections})
