"""The image cache: each file decoded once into a shared memory map, giving exactly the tensors that
decoding the files gives, rebuilt when a file changes or the cache is damaged, built once by two
processes at a time, and a full disk ending in one line."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import colour_image
from PIL import Image
from test_bad_input import imagefolder_with_bad_files
from torch.utils.data import DataLoader

from fkt.cli import build_parser, config_from_args
from fkt.config import build_config
from fkt.data import cache, scan
from fkt.data.base import ImageSet, read_rgb, resized_rgb
from fkt.data.cache import CachedPixels
from fkt.data.module import FKTDataModule, image_tensor
from fkt.errors import UserError

SIZE = 12
BUILDING = "[fkt] building the image cache"


def data_module(root: Path, run: Path, dataset: str = "imagefolder", **data) -> FKTDataModule:
    config = build_config({"data": {"dataset": dataset, "root": str(root), "batch_size": 2, "image_size": SIZE,
                                    "num_workers": 0, **data}})
    module = FKTDataModule(config, split_file=run / "split.json")
    module.setup()
    return module


def items(module: FKTDataModule) -> dict[str, list[tuple[torch.Tensor, int]]]:
    """Every item of every split and of the pool, as the loaders would see them."""
    sets = {**module.sets, **{f"pool{i}": part for i, part in enumerate(module.pool)}}
    return {name: [part[i] for i in range(len(part))] for name, part in sets.items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert len(a[name]) == len(b[name]), name
        for (x, y), (x2, y2) in zip(a[name], b[name]):
            assert x.dtype == x2.dtype == torch.uint8 and x.shape == x2.shape == (3, SIZE, SIZE)
            assert torch.equal(x, x2) and y == y2, name


def texture(root: Path) -> None:
    """Noise over every image under `root`, in its own mode and format: flat colours would resize the
    same whatever the filter, so a different resize in the cache would go unseen."""
    rng = np.random.default_rng(0)
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in (".png", ".jpg", ".bmp"):
            continue
        with Image.open(path) as img:
            mode, size, fmt = img.mode, img.size, img.format
        noise = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        (noise.quantize(16) if mode == "P" else noise.convert(mode)).save(path, format=fmt)


def cache_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def folder(make_dataset):
    """3 classes x 5 train + 2 test images of every format, 14-19 px: resized down to 12."""
    return make_dataset("imagefolder", num_classes=3, train_per_class=5, test_per_class=2, image_size=14)


# ============================================================================ same tensors as the files


@pytest.mark.parametrize("dataset", ["imagefolder", "intel-image", "aptos2019"])
def test_cached_and_uncached_give_identical_tensors(make_dataset, tmp_path, dataset, capsys):
    kwargs = {"imagefolder": dict(num_classes=3, train_per_class=4, test_per_class=2, image_size=30),
              "intel-image": dict(classes=["forest", "sea"], train_per_class=4, test_per_class=2, image_size=40),
              "aptos2019": dict(images_per_class=4, image_size=20)}[dataset]
    gen = make_dataset(dataset, **kwargs)  # intel's 40 px JPEGs decode at 1/2 scale (draft) for 12 px
    texture(gen.root)
    extra = {"unlabelled_root": str(gen.root / "seg_pred")} if dataset == "intel-image" else {}
    cached = data_module(gen.root, tmp_path / "a", dataset, **extra)
    assert BUILDING in capsys.readouterr().out
    uncached = data_module(gen.root, tmp_path / "b", dataset, cache=False, **extra)
    assert all(part.mapped for part in [*cached.sets.values(), *cached.pool])
    assert not any(part.mapped for part in [*uncached.sets.values(), *uncached.pool])
    assert len(cached.pool) == (2 if extra else 0)
    assert_same(items(cached), items(uncached))


def test_in_memory_datasets_are_not_cached(make_dataset, tmp_path, image_cache):
    gen = make_dataset("cifar10", num_classes=2)
    module = data_module(gen.root, tmp_path / "run", "cifar10")
    assert module.sets["train"].cache is not None and not module.sets["train"].mapped
    assert cache_files(image_cache) == []


# ============================================================================ built once, then only opened


def test_built_once_then_reused_without_opening_a_file(folder, tmp_path, image_cache, monkeypatch, capsys):
    first = items(data_module(folder.root, tmp_path / "a"))
    assert capsys.readouterr().out.count(BUILDING) == 2  # train and test
    names = cache_files(image_cache)
    assert len(names) == 6 and {Path(n).suffix for n in names} == {".uint8", ".json", ".lock"}

    def no_open(*args, **kwargs):
        raise AssertionError("an image file was opened")

    monkeypatch.setattr(Image, "open", no_open)
    second = data_module(folder.root, tmp_path / "b")
    assert BUILDING not in capsys.readouterr().out
    assert_same(items(second), first)
    assert cache_files(image_cache) == names

    index = json.loads(next(image_cache.glob("*.json")).read_text())  # plain JSON, no pickle
    assert index["format"] == cache.FORMAT and index["side"] == SIZE and index["bad"] == []
    assert set(index["files"][0]) == {"path", "size", "mtime_ns", "label"} and len(index["sha256"]) == 64


def test_a_changed_or_removed_file_makes_a_new_cache(folder, tmp_path, image_cache, capsys):
    data_module(folder.root, tmp_path / "a")
    capsys.readouterr()
    changed = folder.train_files[2]
    Image.new("RGB", (30, 20), (1, 2, 3)).save(changed, format=Image.registered_extensions()[changed.suffix])
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    module = data_module(folder.root, tmp_path / "b")
    assert capsys.readouterr().out.count(BUILDING) == 1  # train only; test is unchanged
    train = module.bundle.train
    row = train.files.index(changed)
    assert np.array_equal(train.pixels[row], resized_rgb(read_rgb(changed, SIZE), SIZE))
    assert np.array_equal(train.pixels[row][0, 0], (1, 2, 3))  # the new colour, not the old one
    assert len(list(image_cache.glob("*.json"))) == 3

    removed = folder.train_files[5]
    removed.unlink()
    module = data_module(folder.root, tmp_path / "c")
    assert capsys.readouterr().out.count(BUILDING) == 1
    assert len(module.bundle.train) == len(folder.train_files) - 1 and removed not in module.bundle.train.files
    assert_same(items(module), items(data_module(folder.root, tmp_path / "d", cache=False)))


# ============================================================================ two builders at once

BUILDER = """
import sys, time, hashlib
from pathlib import Path
from fkt.data import cache, imagefolder
go = Path(sys.argv[1])
Path(sys.argv[2]).touch()
while not go.exists():
    time.sleep(0.01)
build = cache.build
def slow_build(*args):  # both must be past the first look for a cache while the first one builds
    time.sleep(2.0)
    build(*args)
cache.build = slow_build
train = imagefolder.load(Path(sys.argv[3])).train
pixels = cache.cached_pixels(train, 12, cache.cache_folder(None))
print("digest", hashlib.sha256(pixels.array[pixels.rows].tobytes()).hexdigest())
"""


def test_two_processes_build_once_and_get_the_same_pixels(folder, tmp_path, image_cache):
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", BUILDER, str(go), str(r), str(folder.root)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in ready]
    while not all(r.exists() for r in ready):
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    stdout = "".join(out for out, _ in outs)
    assert stdout.count(BUILDING) == 1, stdout
    assert "waiting for another process" in stdout, stdout
    digests = [line for line in stdout.splitlines() if line.startswith("digest")]
    assert len(digests) == 2 and digests[0] == digests[1]
    train = ImageSet(targets=folder.train_labels, files=folder.train_files)
    want = np.stack([resized_rgb(read_rgb(p, 12), 12) for p in train.files])
    assert digests[0] == f"digest {hashlib.sha256(want.tobytes()).hexdigest()}"


# ============================================================================ damage, full disk


@pytest.mark.parametrize("damage", ["truncated data", "edited index", "garbled index", "missing data"])
def test_a_damaged_cache_is_rebuilt_with_a_note(folder, tmp_path, image_cache, damage, capsys):
    first = items(data_module(folder.root, tmp_path / "a"))
    capsys.readouterr()
    files = folder.train_files
    key = cache.cache_key(cache.file_entries(files, np.array(folder.train_labels)), SIZE)
    data, index = image_cache / f"{key}.uint8", image_cache / f"{key}.json"
    (image_cache / f".{key}.uint8.killed.tmp").write_bytes(b"\0" * 100)  # a killed build's leftover
    if damage == "truncated data":
        os.truncate(data, data.stat().st_size // 2)
        needles = [str(data), "data file of", "expected"]
    elif damage == "missing data":
        data.unlink()
        needles = [str(data), "data file missing"]
    elif damage == "edited index":
        index.write_text(index.read_text().replace('"label": 0', '"label": 1', 1))
        needles = [str(index), "index checksum mismatch"]
    else:
        index.write_text(index.read_text()[:50])
        needles = [str(index), "unreadable index"]
    again = items(data_module(folder.root, tmp_path / "b"))
    notes = [line for line in capsys.readouterr().out.splitlines() if "damaged image cache" in line]
    assert len(notes) == 1 and notes[0].startswith("[fkt] ") and notes[0].endswith("; rebuilding")
    assert all(needle in notes[0] for needle in needles), notes[0]
    assert_same(again, first)
    assert not list(image_cache.glob(".*.tmp"))
    data_module(folder.root, tmp_path / "c")
    assert "damaged" not in capsys.readouterr().out


@pytest.mark.parametrize("where", ["preallocation", "index"])
def test_a_full_disk_is_one_line_and_leaves_no_file(folder, tmp_path, image_cache, monkeypatch, where):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(*((os, "posix_fallocate") if where == "preallocation" else (cache, "write_synced")), full)
    with pytest.raises(UserError) as err:
        data_module(folder.root, tmp_path / "run")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{image_cache}: no space left for the image cache")
    assert "needed" in message and "--no-cache" in message and "$FKT_CACHE" in message
    assert [Path(n).suffix for n in cache_files(image_cache)] == [".lock"]
    assert not (tmp_path / "run" / "split.json").exists()
    monkeypatch.undo()
    monkeypatch.setenv("FKT_CACHE", str(image_cache))
    data_module(folder.root, tmp_path / "run")  # the disk has room again: builds


# ============================================================================ bad images


def test_bad_images_found_by_the_build_as_the_scan_finds_them(make_dataset, tmp_path, monkeypatch):
    root, bad = imagefolder_with_bad_files(make_dataset)
    with pytest.raises(UserError) as scanned:
        data_module(root, tmp_path / "run", cache=False)
    expected = (tmp_path / "run" / "bad_images.txt").read_text()
    with monkeypatch.context() as patch:
        patch.setattr(scan, "scan_images", lambda files: pytest.fail("a second scan"))
        with pytest.raises(UserError) as cached:
            data_module(root, tmp_path / "run")
        module = data_module(root, tmp_path / "skip", skip_bad_images=True)
    assert str(cached.value) == str(scanned.value)
    assert str(cached.value).startswith("3 unreadable image file(s)") and "--skip-bad-images" in str(cached.value)
    assert (tmp_path / "run" / "bad_images.txt").read_text() == expected
    plain = data_module(root, tmp_path / "skip-plain", skip_bad_images=True, cache=False)
    assert module.bundle.skipped == plain.bundle.skipped and [p for p, _ in module.bundle.skipped] == list(map(str, bad))
    assert_same(items(module), items(plain))
    unscanned = data_module(root, tmp_path / "unscanned", scan_images=False)  # a bad row is as unreadable as its file
    part = next(part for part in unscanned.sets.values() if bad[0] in part.images.files)
    with pytest.raises(UserError, match=f"{bad[0]}: cannot read image \\(truncated or corrupt"):
        part[part.images.files.index(bad[0])]


# ============================================================================ memory map, workers, flags


def test_rows_come_from_the_memory_map_and_workers_read_the_same(folder, tmp_path, image_cache):
    module = data_module(folder.root, tmp_path / "run", num_workers=None)
    train, val = (module.sets[name].images.pixels for name in ("train", "val"))
    assert isinstance(train, CachedPixels) and isinstance(train.array, np.memmap) and train.array.mode == "r"
    assert train.array is val.array and Path(train.array.filename).parent == image_cache  # subsets share the map
    assert np.shares_memory(train[0], train.array)
    with pytest.raises(ValueError):
        train[0][0, 0, 0] = 1  # read-only
    assert module.options([module.sets["train"]])["num_workers"] == 0  # a row read is cheaper than IPC
    copy = pickle.loads(pickle.dumps(train))  # a spawned worker maps the file again
    assert len(pickle.dumps(train)) < train.array.nbytes // 4 and isinstance(copy.array, np.memmap)
    assert all(np.array_equal(copy[i], train[i]) for i in range(len(train)))

    direct = torch.stack([module.sets["train"][i][0] for i in range(len(train))])
    loader = DataLoader(module.sets["train"], batch_size=4, num_workers=2)
    assert torch.equal(torch.cat([x for x, _ in loader]), direct)


def test_no_cache_reads_the_files(folder, tmp_path, image_cache, monkeypatch):
    args = build_parser().parse_args(["train", "--out", str(tmp_path), "--no-cache"])
    assert config_from_args(args).data.cache is False
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    module = data_module(folder.root, tmp_path / "run", cache=False, scan_images=False)
    module.sets["train"][0]
    assert opened == [module.sets["train"].images.files[0]] and cache_files(image_cache) == []


def test_cache_size_stores_larger_and_resizes_on_access(folder, tmp_path, image_cache):
    module = data_module(folder.root, tmp_path / "run", cache_size=20)
    part = module.sets["train"]
    assert part.images.pixels.shape[1:] == (20, 20, 3) and not part.in_memory
    path = part.images.files[0]
    want = image_tensor(Image.fromarray(resized_rgb(read_rgb(path, 20), 20)), SIZE)
    assert torch.equal(part[0][0], want)


def test_cache_dir_setting_wins_over_the_environment(folder, tmp_path, image_cache):
    data_module(folder.root, tmp_path / "run", cache_dir=str(tmp_path / "mine"))
    assert len(list((tmp_path / "mine").glob("*.uint8"))) == 2 and cache_files(image_cache) == []
