"""Messy image folders as users have them: every bad input either just works or stops the run at
its start with one line that names the file or folder (and, for unreadable images, all of them)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BAD_REASONS, colour_image, write_bad_image
from PIL import Image

from fkt.config import build_config
from fkt.data import aptos, imagefolder, intel_image, load_dataset
from fkt.data.base import ImageSet
from fkt.data.module import FKTDataModule, ResizedImages
from fkt.data.scan import scan_images
from fkt.errors import UserError

RGB = (200, 55, 128)


def one_line(err: pytest.ExceptionInfo, *needles: str) -> str:
    """The UserError's message: a single line holding every needle."""
    assert err.type is UserError
    message = str(err.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def data_module(root: Path, run: Path, dataset: str = "imagefolder", **data) -> FKTDataModule:
    config = build_config({"data": {"dataset": dataset, "root": str(root), "batch_size": 2, "image_size": 8,
                                    "num_workers": 0, **data}})
    return FKTDataModule(config, split_file=run / "split.json")


# ============================================================================ 1. the scan


def test_scan_names_every_kind_of_bad_file(tmp_path, monkeypatch):
    good = [tmp_path / "ok.jpg", tmp_path / "OK.PNG", tmp_path / "ok.gif", tmp_path / "ok.bmp"]
    for path in good:
        colour_image(0, 2, (16, 16)).save(path)
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(tmp_path / "grey16.png")
    bad = {write_bad_image(tmp_path / name, kind): BAD_REASONS[kind]
           for name, kind in [("cut.jpg", "truncated"), ("cut.png", "truncated"), ("cut.bmp", "truncated"),
                              ("zero.png", "empty"), ("notes.jpg", "text"), ("gone.jpg", "broken-symlink")]}
    colour_image(0, 2, (100, 100)).save(tmp_path / "huge.png")
    bad[tmp_path / "huge.png"] = "too large (10,000 pixels)"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1100)  # an error above 2x this: 100x100 is a "bomb"
    files = sorted(tmp_path.iterdir())
    found = dict(scan_images(files, workers=3))
    assert set(found) == set(bad)  # every bad file at once, the good ones (16-bit PNG included) not
    for path, reason in bad.items():
        assert found[path].startswith(reason), (path, found[path])
    assert "truncated" in found[tmp_path / "cut.jpg"]  # Pillow's own words in the brackets
    assert [p for p, _ in scan_images(files)] == [p for p in files if p in bad]  # in the order given


# ============================================================================ 2. the scan in the data module


def imagefolder_with_bad_files(make_dataset) -> tuple[Path, list[Path]]:
    """3 classes x 6 train + 2 test images, 3 of them (2 train, 1 test) replaced by different bad files."""
    gen = make_dataset("imagefolder", num_classes=3, train_per_class=6, test_per_class=2, image_size=8,
                       class_names=["kiwi", "mango", "zebra"])
    targets = [gen.train_files[1], gen.train_files[8], gen.test_files[3]]
    for path, kind in zip(targets, ["truncated", "empty", "text"]):
        path.unlink()
        write_bad_image(path, kind)
    return gen.root, targets


def test_bad_images_are_all_reported_at_once(make_dataset, tmp_path):
    root, bad = imagefolder_with_bad_files(make_dataset)
    run = tmp_path / "run"
    with pytest.raises(UserError) as err:
        data_module(root, run).setup()
    report = run / "bad_images.txt"
    one_line(err, "3 unreadable image file(s)", str(bad[0]), str(report), "--skip-bad-images")
    lines = report.read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in bad]
    assert [line.split("\t")[1].split(" (")[0] for line in lines] == ["truncated or corrupt", "empty file",
                                                                       "not an image"]
    assert not (run / "split.json").exists()  # no split of a data set that is about to change
    data_module(root, tmp_path / "unscanned", scan_images=False).setup()  # the scan can be turned off


def test_skip_bad_images_leaves_them_out_and_records_them(make_dataset, tmp_path, capsys):
    root, bad = imagefolder_with_bad_files(make_dataset)
    module = data_module(root, tmp_path / "run", skip_bad_images=True)
    module.setup()
    assert "skipped 3 unreadable image(s)" in capsys.readouterr().out
    assert [path for path, _ in module.bundle.skipped] == [str(p) for p in bad]
    assert module.bundle.skipped[1][1] == "empty file (0 bytes)"
    used = [p for name in ("train", "val", "test") for p in module.sets[name].images.files]
    assert len(used) == 3 * 8 - 3 and not set(used) & set(bad)
    assert len((tmp_path / "run" / "bad_images.txt").read_text().splitlines()) == 3
    for i in range(len(module.sets["train"])):
        module.sets["train"][i]  # everything left decodes
    for path in (root / "train" / "kiwi").iterdir():  # a class whose every image is bad cannot be trained on
        path.write_bytes(b"")
    with pytest.raises(UserError) as err:
        data_module(root, tmp_path / "run2", skip_bad_images=True).setup()
    one_line(err, "class 'kiwi'", "none of its 6 image(s) in train is readable")


# ============================================================================ 3. decoding every mode


def write_mode(path: Path, mode: str) -> None:
    """A 12x12 image of one colour in `mode` (see test_every_mode_decodes_to_rgb for the colour)."""
    size = (12, 12)
    if mode in ("I;16", "I", "F"):
        value = {"I;16": np.uint16(40000), "I": np.int32(40000), "F": np.float32(0.5)}[mode]
        Image.fromarray(np.full(size, value)).save(path)
    elif mode == "I;16B":
        Image.frombytes("I;16B", size, np.full(size, 40000, ">u2").tobytes()).save(path)
    elif mode in ("P+transparency", "P"):
        img = Image.new("P", size, 1)
        img.putpalette([0, 0, 0, *RGB] + [0] * 762)
        img.save(path, **({"transparency": 1} if mode == "P+transparency" else {}))
    elif mode == "1":
        Image.new("1", size, 1).save(path)
    elif mode in ("CMYK", "YCbCr"):
        Image.new("RGB", size, RGB).convert(mode).save(path)
    else:
        Image.new(mode, size, {"L": RGB[0], "LA": (RGB[0], 90), "RGBA": (*RGB, 90)}[mode]).save(path)


GREY = (RGB[0],) * 3


@pytest.mark.parametrize("mode, name, want, tol", [
    ("L", "a.png", GREY, 0), ("LA", "a.png", GREY, 0), ("1", "a.png", (255, 255, 255), 0),
    ("P", "a.png", RGB, 0), ("P+transparency", "a.png", RGB, 0), ("P+transparency", "a.gif", RGB, 0),
    ("RGBA", "a.PNG", RGB, 0), ("CMYK", "a.JPG", RGB, 6), ("YCbCr", "a.tif", RGB, 3),
    ("I;16", "a.png", (156,) * 3, 0), ("I;16B", "a.tif", (156,) * 3, 0), ("I", "a.tif", (156,) * 3, 0),
    ("F", "a.tif", (128,) * 3, 0),
])
def test_every_mode_decodes_to_rgb(tmp_path, mode, name, want, tol):
    """16-bit grey 40000 is 40000 >> 8 = 156 (not clipped to 255); float 0.5 in [0, 1] is 128."""
    path = tmp_path / name
    write_mode(path, mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Pillow's palette-transparency warning
        img = ImageSet(targets=[0], files=[path]).image(0)
        x, _ = ResizedImages(ImageSet(targets=[0], files=[path]), 8)[0]
    assert img.mode == "RGB" and img.size == (12, 12)
    assert np.abs(np.asarray(img, float).reshape(-1, 3).mean(0) - want).max() <= tol
    assert x.shape == (3, 8, 8) and x.dtype == torch.uint8


def test_exif_orientation_and_large_jpeg(tmp_path):
    """A phone photo stored sideways comes out upright; a 6000x4000 JPEG decodes at reduced scale."""
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "phone.jpg", exif=exif)
    Image.new("RGB", (6000, 4000), RGB).save(tmp_path / "big.jpg", quality=80)
    images = ImageSet(targets=[0, 0], files=[tmp_path / "phone.jpg", tmp_path / "big.jpg"])
    upright = images.image(0)
    assert upright.size == (20, 40)
    assert upright.getpixel((10, 5))[0] > 200 and upright.getpixel((10, 35))[2] > 200  # red on top
    assert images.image(1, size=150).size == (750, 500)  # 1/8 scale, still above 150
    assert images.image(1).size == (6000, 4000)
    x, _ = ResizedImages(images, 150)[1]
    assert x.shape == (3, 150, 150) and np.abs(x.float().mean((1, 2)).numpy() - RGB).max() < 3


# ============================================================================ 4. class folders


def test_class_folders_follow_links_and_ignore_junk(make_dataset, tmp_path):
    gen = make_dataset("imagefolder", num_classes=2, train_per_class=3, test_per_class=None, image_size=8,
                       class_names=["kiwi", "zebra"])
    train = gen.root / "train"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for i in range(2):
        colour_image(1, 2, (8, 8)).save(outside / f"{i}.png")
    (train / "linked").symlink_to(outside, target_is_directory=True)  # a symlinked class folder
    kiwi = train / "kiwi"
    (kiwi / "linked.png").symlink_to(outside / "0.png")  # a symlinked file
    (kiwi / "loop").symlink_to(train, target_is_directory=True)  # a link back up: must not loop
    write_bad_image(kiwi / "gone.jpg", "broken-symlink")
    colour_image(0, 2, (8, 8)).save(kiwi / "UPPER.JPG")
    for junk in ("Thumbs.db", "desktop.ini", "notes.txt"):
        (kiwi / junk).write_text("x")
    (kiwi / ".hidden").mkdir()
    colour_image(0, 2, (8, 8)).save(kiwi / ".hidden" / "0.png")
    colour_image(0, 2, (8, 8)).save(kiwi / ".secret.png")
    bundle = load_dataset("imagefolder", gen.root)
    assert bundle.classes == ["kiwi", "linked", "zebra"]
    files = bundle.train.files
    assert len(files) == len(set(files))
    assert {kiwi / "linked.png", kiwi / "gone.jpg", kiwi / "UPPER.JPG", train / "linked" / "0.png"} <= set(files)
    assert not [f for f in files if "loop" in f.parts or ".hidden" in f.parts or f.name.startswith(".")]
    assert np.bincount(bundle.train.targets).tolist() == [3 + 3 + 0, 2, 3]  # loop adds nothing
    junk = "train/kiwi/Thumbs.db, train/kiwi/desktop.ini, train/kiwi/notes.txt"
    assert [n for n in bundle.notes if "ignored" in n] == [f"{gen.root}: ignored 3 non-image file(s), e.g. {junk}"]
    assert scan_images(files) == [(kiwi / "gone.jpg", "broken symlink")]  # listed, so the scan reports it


@pytest.mark.parametrize("case", ["empty class", "one class", "test classes differ", "intel without seg_test"])
def test_class_folder_mistakes_are_one_line(make_dataset, case):
    if case == "intel without seg_test":
        gen = make_dataset("intel-image", classes=["forest", "sea"], train_per_class=1, test_per_class=1,
                           image_size=8, with_pred=False)
        shutil.rmtree(gen.root / "seg_test")
        with pytest.raises(UserError) as err:
            intel_image.load(gen.root)
        one_line(err, str(gen.root / "seg_test"), "not found")
        return
    gen = make_dataset("imagefolder", num_classes=3, train_per_class=2, test_per_class=1, image_size=8,
                       class_names=["kiwi", "mango", "zebra"])
    train, test = gen.root / "train", gen.root / "test"
    if case == "empty class":
        (train / "empty").mkdir()
        (train / "empty" / "notes.txt").write_text("x")
        needles = [str(train / "empty"), "empty class folder in train"]
    elif case == "one class":
        shutil.rmtree(test)
        for name in ("mango", "zebra"):
            shutil.rmtree(train / name)
        needles = [str(train), "needs at least 2 classes", "'kiwi'"]
    else:
        (test / "zebra").rename(test / "zebras")
        needles = [str(test), "['kiwi', 'mango', 'zebras']", "['kiwi', 'mango', 'zebra']"]
    with pytest.raises(UserError) as err:
        imagefolder.load(gen.root)
    one_line(err, *needles)


# ============================================================================ 5. APTOS CSV


@pytest.mark.parametrize("case", ["ids without image", "images without row", "duplicate id", "empty id"])
def test_aptos_csv_mistakes_are_one_line(make_dataset, case):
    gen = make_dataset("aptos2019", images_per_class=2, image_size=8)
    csv_path, images = gen.root / "train.csv", gen.root / "train_images"
    lines = csv_path.read_text().splitlines()
    code = lines[3].split(",")[0]
    if case == "ids without image":
        for path in gen.train_files[4:6]:
            path.unlink()
        needles = [str(gen.train_files[4]), "listed in train.csv but not found", "2 missing",
                   gen.train_files[5].name]
    elif case == "images without row":
        for name in ("stray1.png", "stray2.PNG"):
            colour_image(0, 5, (8, 8)).save(images / name)
        needles = [str(images), "2 image(s) without a row in train.csv", "stray1.png, stray2.PNG"]
    elif case == "duplicate id":
        lines.append(f"{code},1")
        needles = [f"{csv_path}:{len(lines)}", repr(code), "repeats line 4"]
    else:
        lines[3] = ",2"
        needles = [f"{csv_path}:4", "empty id_code"]
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as err:
        aptos.load(gen.root)
    one_line(err, *needles)


def test_aptos_upper_case_extension_loads(make_dataset):
    gen = make_dataset("aptos2019", images_per_class=1, image_size=8)
    first = gen.train_files[0]
    first.rename(first.with_suffix(".PNG"))
    bundle = aptos.load(gen.root)
    assert bundle.train.files[0] == first.with_suffix(".PNG")
    assert bundle.train.targets.tolist() == gen.train_labels


# ============================================================================ the command line


@pytest.mark.no_training  # stopped by the scan, before training
def test_cli_bad_images_exit_2_with_one_line(make_dataset, tmp_path, fkt_cli):
    root, bad = imagefolder_with_bad_files(make_dataset)
    out = tmp_path / "out"
    result = fkt_cli("train", "--dataset", "imagefolder", "--data-root", str(root), "--out", str(out),
                     "--epochs", "1", "--batch-size", "4")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("fkt: error: 3 unreadable image file(s)") and str(bad[0]) in lines[0]
    assert "--skip-bad-images" in lines[0] and (out / "bad_images.txt").is_file()
    assert not (out / "split.json").exists() and not (out / "metrics.json").exists()
