"""Shared fixtures: small datasets GENERATED in each real on-disk layout.

Each `make_*` function writes real files (gzipped IDX, pickled CIFAR batches, JPEG/PNG images,
a Kaggle CSV) under `root` and returns a `Generated` record of what a loader should give back:
class names in the loader's order, labels in the loader's order, and (for the in-memory formats)
the exact pixel arrays written. `Generated` is path-like, so it can be passed as a data root.

Every image carries its class in its colour: the red channel is `class_value(label, n)` all over
the image (JPEG keeps a flat colour to within a few levels), so `label_of(image, n)` reads the
label back from the loaded pixels and a test can check that labels match the files.

The suite's rules (the end of this file; tests/test_suite_rules.py tests them):

* The backbone. Every in-process run builds `resnet-tiny` (ResNet-18's stem and layer1-4 at an eighth
  of its widths, 309k parameters, 128 features) unless the test asks for another: from the session's
  start (pytest_configure), `resnet-tiny` is the default of `fkt.config.ModelConfig.backbone` (so of
  `Config()`, `build_config`, `resolve` and every `fkt ...` run through `fkt.cli.main`), and a packaged
  preset (src/fkt/presets/*.yaml) read through `fkt.config.load_yaml` has its `model.backbone`
  rewritten to `resnet-tiny`; `fkt bench`'s --backbone defaults to it as well. An explicit choice
  wins: `--backbone`, `--set model.backbone=...`, a `model.backbone` in a dict or in a YAML file of
  the test's own. The config, the run's config.yaml and its metrics name the backbone that was built.
  A test that needs the real default marks itself `@pytest.mark.resnet18`: for that test the default
  is ResNet-18 and presets read as shipped (the `backbone` fixture says which). Module- and
  session-scoped fixtures are built before any test's marker applies: they get `resnet-tiny` unless
  they name a backbone. Subprocesses (`python -m fkt`, an installed `fkt`) do not see any of this:
  pass `--backbone resnet-tiny` to them.
* Slow tests. Every test that trains is marked `slow` at collection (`pytest_collection_modifyitems`),
  so `make test-fast` (`pytest -m "not slow"`) trains nothing. The rule reads the code of the test,
  of the helpers it calls (transitively, anywhere under tests/) and of the fixtures it requests: see
  `training_evidence`. A test the rule marks that stops before training (a refused command) may say
  `@pytest.mark.no_training`. The rule cannot see everything, so a guard backs it: a test not marked
  slow fails the moment it (or a fixture it uses) calls `pytorch_lightning.Trainer.fit`, or starts a
  subprocess running `fkt train|reproduce|bench` or Python code that trains by the rule; the message
  says to mark it. The guard fails the test even where the code under test catches its exception.
* Temporary folders. pytest keeps the temporary folders of failed tests only
  (tmp_path_retention_policy = "failed" in pyproject.toml); `image_cache` and `make_dataset` folders
  go with a passing test too (`scratch`), and module-scoped fixtures' folders at the session's end.
  $FKT_CACHE points into them, and $HOME, $TMPDIR, $XDG_CACHE_HOME, $MPLCONFIGDIR and torch.compile's
  caches point into the session's folder (`isolate_home`), so the suite writes nowhere else.

Fixtures:
  fkt_cli(*args, cwd=None) -> CompletedProcess   `fkt ARGS` through cli.main, in this process
  image_cache -> Path   (autouse) this test's own $FKT_CACHE folder
  backbone -> str   (autouse) the default backbone of this test's runs: resnet-tiny, or resnet18 if marked
  training_guard -> list   the guard's record of this test (for the guard's own tests)

Helpers (import from conftest): one_error_line(result, *needles, code=None), scratch(request, factory, name)
  make_dataset(name, **kwargs) -> Generated   each call in a fresh temporary folder
  fashion_mnist_data, cifar10_data, intel_image_data, aptos_data,
  imagefolder_data (train/ + test/), imagefolder_no_test_data   small defaults
"""

from __future__ import annotations

import ast
import contextlib
import csv
import functools
import gzip
import importlib.abc
import importlib.util
import inspect
import os
import pickle
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
import types
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


def scratch(request, tmp_path_factory, name: str) -> Path:
    """A fresh folder under pytest's temporary folder that goes when the test that made it passes
    (as `tmp_path` does with tmp_path_retention_policy = "failed"), not only at the session's end."""
    folder = tmp_path_factory.mktemp(name)

    def remove() -> None:
        outcomes = request.node.stash.get(_OUTCOME, {})
        if request.config.getini("tmp_path_retention_policy") == "failed" and outcomes and all(outcomes.values()):
            shutil.rmtree(folder, ignore_errors=True)

    request.addfinalizer(remove)
    return folder


@pytest.fixture(autouse=True)
def image_cache(request, tmp_path_factory, monkeypatch) -> Path:
    """Each test its own image cache folder ($FKT_CACHE): none writes to ~/.cache or shares one by accident."""
    folder = scratch(request, tmp_path_factory, "fkt_cache")
    monkeypatch.setenv("FKT_CACHE", str(folder))
    return folder


@pytest.fixture
def make_dataset(request, tmp_path_factory) -> Callable[..., Generated]:
    """`make_dataset(name, **kwargs)`: a dataset in the layout `name` (a key of fkt.data.DATASETS),
    generated in a fresh temporary folder; kwargs go to the matching `make_*` function."""

    def make(name: str, **kwargs) -> Generated:
        root = scratch(request, tmp_path_factory, name.replace("-", "_"))
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


# =========================================================================== the suite's own rules
# (backbone selection, slow marking and its guard, temporary folders: see the module docstring)

TEST_BACKBONE = "resnet-tiny"
REAL_BACKBONE_MARKER = "resnet18"
TESTS_DIR = Path(__file__).resolve().parent
PRESETS_DIR = Path(__file__).resolve().parents[1] / "src" / "fkt" / "presets"  # replaced below by the package's

# What trains (the static rule). Functions of fkt that train, called by name or through their module;
# `.fit(` on anything (a Lightning Trainer's). fkt subcommands that train.
TRAINING_FUNCTIONS = frozenset({"train", "train_stages", "run_grid", "run_cells", "run_cell", "run_bench",
                                "run_all", "run_fkt", "run_bare", "measure", "measure_in_fresh_process",
                                "tune_grid", "run_study", "tune_command"})
TRAINING_COMMANDS = frozenset({"train", "reproduce", "bench", "tune"})
LAUNCHERS = {"subprocess": {"run", "Popen", "call", "check_call", "check_output"}, "os": {"system"},
             "fkt.cli": {"main"}}


class _Backbone:
    """The backbone in-process runs default to, and whether packaged presets are rewritten to it."""

    tiny = True
    _saved: list = []

    @classmethod
    def set_default(cls, name: str) -> None:
        from fkt import config as fkt_config

        fkt_config.ModelConfig.model_fields["backbone"].default = name
        fkt_config.ModelConfig.model_rebuild(force=True)
        fkt_config.Config.model_fields["model"].default = fkt_config.ModelConfig()
        fkt_config.Config.model_rebuild(force=True)

    @classmethod
    def install(cls) -> None:
        """The tiny default for ModelConfig and Config, a preset reader that rewrites `model.backbone`,
        and fkt bench's --backbone default (until `uninstall`)."""
        from fkt import cli, config as fkt_config, presets

        global PRESETS_DIR
        PRESETS_DIR = Path(str(presets.resources.files(presets.__name__))).resolve()
        cls._saved = [fkt_config.ModelConfig.model_fields["backbone"].default,
                      fkt_config.Config.model_fields["model"].default, fkt_config.load_yaml, cli.build_parser]
        cls.set_default(TEST_BACKBONE)
        real_load, real_parser = fkt_config.load_yaml, cli.build_parser

        def load_yaml(path):
            data = real_load(path)
            if cls.tiny and Path(path).resolve().parent == PRESETS_DIR and isinstance(data.get("model"), dict) \
                    and "backbone" in data["model"]:
                data["model"]["backbone"] = TEST_BACKBONE
            return data

        def build_parser():
            parser = real_parser()
            for action in parser._subparsers._group_actions if parser._subparsers else []:
                bench = getattr(action, "choices", {}).get("bench")
                if cls.tiny and bench is not None and bench.get_default("backbone") is not None:
                    bench.set_defaults(backbone=TEST_BACKBONE)
            return parser

        fkt_config.load_yaml, cli.build_parser = load_yaml, build_parser

    @classmethod
    def uninstall(cls) -> None:
        from fkt import cli, config as fkt_config

        backbone, model, fkt_config.load_yaml, cli.build_parser = cls._saved
        fkt_config.ModelConfig.model_fields["backbone"].default = backbone
        fkt_config.ModelConfig.model_rebuild(force=True)
        fkt_config.Config.model_fields["model"].default = model
        fkt_config.Config.model_rebuild(force=True)

    @classmethod
    @contextlib.contextmanager
    def real(cls) -> Iterator[None]:
        """ResNet-18 as the default and presets as shipped, for one test."""
        from fkt.config import ModelConfig

        tiny_default = ModelConfig.model_fields["backbone"].default
        cls.tiny = False
        cls.set_default(cls._saved[0])
        try:
            yield
        finally:
            cls.tiny = True
            cls.set_default(tiny_default)


@pytest.fixture(autouse=True)
def backbone(request) -> Iterator[str]:
    """The backbone this test's in-process runs build by default: resnet-tiny, or resnet18 (the real
    default, presets as shipped) for a test marked `@pytest.mark.resnet18`."""
    if request.node.get_closest_marker(REAL_BACKBONE_MARKER) is None:
        yield TEST_BACKBONE
        return
    with _Backbone.real():
        yield "resnet18"


# --------------------------------------------------------------------------- the static rule

@dataclass
class _Facts:
    """What one function's code does, as far as training goes."""

    trains: str | None = None         # why it trains by itself (E1, E2), or None
    launches: bool = False            # it runs fkt's CLI or a subprocess (a "runner")
    variable_launch: bool = False     # a runner call whose arguments are not all literals
    command_literal: bool = False     # a list/tuple literal holding a training command ("train", ...)
    calls: list = field(default_factory=list)  # names it calls that may be test helpers or fixtures


_FACTS: dict = {}


def _imports(tree: "ast.AST") -> dict[str, str]:
    """`import x as y` / `from x import a as b` anywhere in `tree`: local name -> dotted origin."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update({a.asname or a.name.split(".")[0]: a.name if a.asname else a.name.split(".")[0]
                          for a in node.names})
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
    return names


def _origin(node: "ast.AST", local: dict[str, str], env: dict) -> str | None:
    """The dotted name a call target refers to (`fkt.engine.train`, `subprocess.run`), or None."""
    if isinstance(node, ast.Name):
        if node.id in local:
            return local[node.id]
        value = env.get(node.id)
        if isinstance(value, types.ModuleType):
            return value.__name__
        if callable(value) and getattr(value, "__module__", None):
            return f"{value.__module__}.{getattr(value, '__name__', node.id)}"
        return None
    if isinstance(node, ast.Attribute):
        base = _origin(node.value, local, env)
        return f"{base}.{node.attr}" if base else None
    return None


def _literal_commands(node: "ast.AST") -> bool:
    """A list/tuple literal (or a sum of them) with a training command among its elements."""
    if isinstance(node, ast.BinOp):
        return _literal_commands(node.left) or _literal_commands(node.right)
    return isinstance(node, (ast.List, ast.Tuple)) and any(
        isinstance(e, ast.Constant) and e.value in TRAINING_COMMANDS for e in node.elts)


def _source_facts(tree: "ast.AST", env: dict, runners: set[str]) -> _Facts:
    """Facts of code `tree` whose global names are `env`; `runners`: names known to launch fkt."""
    facts, local = _Facts(), _imports(tree)
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)) and _literal_commands(node):
            facts.command_literal = True
        if not isinstance(node, ast.Call):
            continue
        target = node.func
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
        origin = _origin(target, local, env) or ""
        module, _, last = origin.rpartition(".")
        if name == "fit" and isinstance(target, ast.Attribute):
            facts.trains = facts.trains or "calls .fit("
        elif last in TRAINING_FUNCTIONS and module.startswith("fkt"):
            facts.trains = facts.trains or f"calls {origin}"
        elif isinstance(target, ast.Name) and not origin and name in TRAINING_FUNCTIONS and name not in env:
            facts.trains = facts.trains or f"calls {name}("  # a name bound at run time: assume fkt's
        launcher = last in LAUNCHERS.get(module, ()) or (isinstance(target, ast.Name) and name in runners)
        if isinstance(target, ast.Name) and name and name not in local:
            facts.calls.append(name)
        if not launcher:
            continue
        facts.launches = True
        args = node.args
        if any(isinstance(a, ast.Constant) and a.value in TRAINING_COMMANDS for a in args) or any(
                _literal_commands(a) for a in args):
            facts.trains = facts.trains or f"runs a training command through {name or origin}"
        elif not all(isinstance(a, ast.Constant) for a in args):
            facts.variable_launch = True
    return facts


def _plain(func) -> types.FunctionType | None:
    """The plain function behind a test, helper or fixture (None for a class, a builtin, ...)."""
    func = getattr(func, "_get_wrapped_function", lambda: func)()  # a @pytest.fixture definition
    func = inspect.unwrap(func)
    return func if isinstance(func, types.FunctionType) else None


def _function_facts(func, runners: frozenset[str]) -> _Facts | None:
    """Facts of a function defined under tests/ (None for anything else: pytest's, fkt's, a class)."""
    func = _plain(func)
    if func is None:
        return None
    try:
        if not Path(inspect.getsourcefile(func) or "").resolve().is_relative_to(TESTS_DIR):
            return None
        key = (func, runners)
        if key not in _FACTS:
            tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
            _FACTS[key] = _source_facts(tree, func.__globals__, set(runners))
        return _FACTS[key]
    except (OSError, TypeError, SyntaxError):
        return None


def _fixture_functions(item) -> dict[str, object]:
    infos = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    plain = {name: _plain(defs[-1].func) for name, defs in infos.items() if defs}
    return {name: func for name, func in plain.items() if func is not None}


def training_evidence(item) -> str | None:
    """Why `item` trains, by a static look at its code (None: no sign that it does). The code is the
    test function, the module-level helpers it calls (transitively, wherever in tests/ they live) and
    the fixtures it requests (with their helpers). It trains when that code calls fkt's training
    functions or `.fit(`, runs `fkt train|reproduce|bench` through `fkt.cli.main`, a subprocess or a
    helper or fixture that does either (a "runner"), or runs a runner on arguments that are not
    literals while a training command is written down in that code or in the test's parameters."""
    function = _plain(getattr(item, "function", None))
    if function is None:
        return None
    fixtures = _fixture_functions(item)
    # a fixture or helper is a runner when its own code launches fkt or a subprocess
    runners = frozenset(name for name, func in fixtures.items()
                        if (facts := _function_facts(func, frozenset())) and facts.launches)
    seen, todo, launched_variably, commands = set(), [function, *fixtures.values()], False, False
    while todo:
        func = todo.pop()
        if func in seen:
            continue
        seen.add(func)
        helper_runners = runners | {n for n in _called_helpers(func) if _is_runner(func, n)}
        facts = _function_facts(func, frozenset(helper_runners))
        if facts is None:
            continue
        if facts.trains:
            return f"{facts.trains} in {func.__name__}"
        launched_variably |= facts.variable_launch
        commands |= facts.command_literal
        todo += [f for n in facts.calls if (f := _plain(func.__globals__.get(n))) is not None]
    params = getattr(getattr(item, "callspec", None), "params", {})
    if launched_variably and (commands or _params_hold_command(params)):
        return "runs a training command given at run time"
    return None


def _called_helpers(func) -> list[str]:
    facts = _function_facts(func, frozenset())
    return facts.calls if facts else []


def _is_runner(caller, name: str, depth: int = 0) -> bool:
    """Whether the test helper `name` (a global of `caller`) launches fkt or a subprocess, itself or
    through helpers it calls."""
    func = _plain(caller.__globals__.get(name))
    facts = _function_facts(func, frozenset()) if func is not None else None
    if facts is None or depth > 5:
        return False
    return facts.launches or any(_is_runner(func, n, depth + 1) for n in facts.calls)


def _params_hold_command(value) -> bool:
    if isinstance(value, str):
        return value in TRAINING_COMMANDS
    if isinstance(value, dict):
        return any(_params_hold_command(v) for v in value.values())
    if isinstance(value, (list, tuple, set)):
        return any(_params_hold_command(v) for v in value)
    return False


def pytest_collection_modifyitems(config, items) -> None:
    """Every test that trains is marked `slow` (unless marked `no_training`), so `pytest -m "not slow"`
    trains nothing; the guard below fails any test the rule misses."""
    for item in items:
        if item.get_closest_marker("slow") or item.get_closest_marker("no_training"):
            continue
        why = training_evidence(item)
        if why:
            item.add_marker(pytest.mark.slow)
            item.user_properties.append(("slow_because", why))


# --------------------------------------------------------------------------- the runtime guard

_CURRENT: list = []  # the item being set up, run or torn down
_VIOLATIONS = pytest.StashKey[list]()
_OUTCOME = pytest.StashKey[dict]()


def _refuse(what: str) -> None:
    """Fail the current test if it is not marked slow: it is about to train."""
    item = _CURRENT[-1] if _CURRENT else None
    if item is None or item.get_closest_marker("slow"):
        return
    message = (f"{item.nodeid} {what} but is not marked slow: mark it @pytest.mark.slow (the static rule "
               "in tests/conftest.py missed it; teach it this pattern if you can), so that `make test-fast` "
               "trains nothing")
    item.stash.setdefault(_VIOLATIONS, []).append(message)
    pytest.fail(message, pytrace=False)


def _subprocess_trains(args) -> str | None:
    """`fkt train|reproduce|bench` (by `-m fkt` or an `fkt` executable), or a Python script or `-c`
    code that trains by the static rule."""
    tokens = shlex.split(args) if isinstance(args, str) else [os.fspath(a) for a in args]
    for i, token in enumerate(tokens[:-1]):
        if (token == "fkt" and i and tokens[i - 1] == "-m") or Path(token).name == "fkt":
            if tokens[i + 1] in TRAINING_COMMANDS:
                return f"runs `fkt {tokens[i + 1]}` in a subprocess"
    code = None
    if len(tokens) > 2 and tokens[1] == "-c":
        code = tokens[2]
    elif len(tokens) > 1 and tokens[1].endswith(".py") and Path(tokens[1]).is_file():
        code = Path(tokens[1]).read_text()
    if code is not None:
        try:
            facts = _source_facts(ast.parse(code), {}, set())
        except SyntaxError:
            return None
        if facts.trains:
            return f"runs Python code in a subprocess that {facts.trains}"
    return None


def _guard_fit(lightning) -> None:
    """Trainer.fit refuses in a test not marked slow."""
    real_fit = lightning.Trainer.fit

    @functools.wraps(real_fit)
    def fit(self, *args, **kwargs):
        _refuse("calls pytorch_lightning.Trainer.fit")
        return real_fit(self, *args, **kwargs)

    lightning.Trainer.fit = fit
    _RESTORE.append((lightning.Trainer, "fit", real_fit))


class _WhenImported(importlib.abc.MetaPathFinder):
    """Runs `then(module)` as soon as the module `name` is imported (at once if it already is), so a
    session that never imports Lightning does not pay for its import (seconds)."""

    def __init__(self, name: str, then: Callable) -> None:
        self.name, self.then = name, then
        if name in sys.modules:
            then(sys.modules[name])
        else:
            sys.meta_path.insert(0, self)

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # the real finders find it; this one only wraps its loader
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            load = spec.loader.exec_module

            def exec_module(module) -> None:
                load(module)
                self.then(module)

            spec.loader.exec_module = exec_module
        return spec

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def _install_guard() -> None:
    """The guard: on Trainer.fit (from Lightning's import on) and on every subprocess start."""
    real_popen = subprocess.Popen.__init__

    @functools.wraps(real_popen)
    def popen(self, args, *rest, **kwargs):
        why = _subprocess_trains(args)
        if why:
            self._child_created = False  # what Popen.__del__ reads of a process never started
            _refuse(why)
        return real_popen(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = popen
    _RESTORE.append((subprocess.Popen, "__init__", real_popen))
    _RESTORE.append(_WhenImported("pytorch_lightning", _guard_fit))


_RESTORE: list = []
_ENVIRONMENT = pytest.MonkeyPatch()


def isolate_home(config) -> Path:
    """Whatever writes under the home folder or the system's temporary folder (matplotlib's font
    cache, pip, torch.compile's caches, Python's tempfile, fkt's ~/.cache fallbacks) writes under
    this session's pytest temporary folder instead, in this process and in its subprocesses."""
    home = config._tmp_path_factory.mktemp("home", numbered=False)  # the factory exists by now (trylast)
    folders = {"HOME": home, "XDG_CACHE_HOME": home / ".cache", "XDG_CONFIG_HOME": home / ".config",
               "MPLCONFIGDIR": home / ".config" / "matplotlib", "TMPDIR": home / "tmp",
               "TORCHINDUCTOR_CACHE_DIR": home / ".cache" / "torchinductor",
               "TRITON_CACHE_DIR": home / ".cache" / "triton"}
    for name, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        _ENVIRONMENT.setenv(name, str(folder))
    _ENVIRONMENT.setattr(tempfile, "tempdir", str(folders["TMPDIR"]))
    return home


@pytest.hookimpl(trylast=True)
def pytest_configure(config) -> None:
    isolate_home(config)
    _Backbone.install()
    _install_guard()


def pytest_unconfigure(config) -> None:
    while _RESTORE:
        undo = _RESTORE.pop()
        if isinstance(undo, _WhenImported):
            undo.remove()
        else:
            owner, name, value = undo
            setattr(owner, name, value)
    _Backbone.uninstall()
    _ENVIRONMENT.undo()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _CURRENT.append(item)
    try:
        return (yield)
    finally:
        _CURRENT.pop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that trained unmarked fails even where the guard's exception was caught; and the
    outcome of each phase is kept, for the scratch folders below."""
    report = yield
    violations = item.stash.get(_VIOLATIONS, [])
    if violations and report.when == "call" and report.passed:
        report.outcome, report.longrepr = "failed", violations[0]
    item.stash.setdefault(_OUTCOME, {})[report.when] = report.passed
    return report


@pytest.fixture
def training_guard(request) -> list:
    """The guard's record of this test: a test of the guard itself clears it after seeing it work."""
    return request.node.stash.setdefault(_VIOLATIONS, [])
