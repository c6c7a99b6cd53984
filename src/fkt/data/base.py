"""What every dataset loader returns: labelled images, in memory or as files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from fkt.errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def examples(items: list, shown: int = 3, sep: str = ", ") -> str:
    """The first few items for a one-line message: `a, b, c, ...`."""
    return sep.join(str(item) for item in items[:shown]) + (f"{sep}..." if len(items) > shown else "")


def grey_to_uint8(values: np.ndarray) -> np.ndarray:
    """16/32-bit integer grey keeps its top 8 bits (convert("RGB") would clip all above 255 to white);
    float grey in [0, 1] is scaled to 0-255, any other float range is stretched onto it."""
    if values.dtype.kind in "ui":
        return (np.clip(values, 0, 65535).astype(np.uint16) >> 8).astype(np.uint8)
    values = np.nan_to_num(values.astype(np.float64))
    low, high = values.min(), values.max()
    if low < 0 or high > 1:
        values = (values - low) / (high - low) if high > low else np.clip(values, 0, 1)
    return np.round(values * 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode as RGB: alpha dropped (the colours kept), palette, 1-bit, CMYK and YCbCr converted,
    high-bit-depth and float grey scaled to 8 bits rather than clipped."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return Image.fromarray(grey_to_uint8(np.asarray(img)), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # P -> RGB directly warns about byte transparency
    return img.convert("RGB")


def read_rgb(path: Path, size: int | None = None) -> Image.Image:
    """An image file upright (EXIF orientation) in RGB. With `size` (the side it will be resized to),
    a JPEG is decoded at 1/2 to 1/8 scale but never below `size`: a 6000x4000 photo stays cheap."""
    with Image.open(path) as img:
        if size is not None:
            img.draft("RGB", (size, size))  # JPEG only; a no-op for other formats
        ImageOps.exif_transpose(img, in_place=True)
        return to_rgb(img)


def resized_rgb(img: Image.Image, size: int) -> np.ndarray:
    """An RGB image as (size, size, 3) uint8: the one resize that training, evaluation, the image cache
    and `fkt predict` share for image files, so they cannot drift apart."""
    return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.uint8)


@dataclass
class ImageSet:
    """Labelled images. `pixels` (N,H,W[,C] uint8) for sets held in memory or in the image cache (then
    `files` too, so reports can name them), `files` alone otherwise."""

    targets: np.ndarray
    pixels: np.ndarray | None = None  # or fkt.data.cache.CachedPixels: rows of a memory map
    files: list[Path] | None = None
    # Pool images only: the withheld class of each (-1 unknown, -2 a class outside the task), for the
    # pseudo-labels' accuracy, a diagnostic that never reaches a loss (see fkt.pseudo)
    truth: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.targets = np.asarray(self.targets, dtype=np.int64)
        n = len(self.pixels) if self.pixels is not None else len(self.files or [])
        if n != len(self.targets):
            raise ValueError(f"{n} images but {len(self.targets)} labels")

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, index: int, size: int | None = None) -> Image.Image:
        """A PIL image in RGB; `size` is a hint that lets large JPEGs decode at reduced scale."""
        if self.pixels is not None:
            return to_rgb(Image.fromarray(self.pixels[index]))
        path = self.files[index]
        try:
            return read_rgb(path, size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise UserError(f"{path}: cannot read image ({err})") from None

    def without_labels(self) -> ImageSet:
        """The same images, every label -1: a label of an image counted as unlabelled reaches no loss."""
        return ImageSet(targets=np.full(len(self), -1), pixels=self.pixels, files=self.files, truth=self.targets.copy())

    def subset(self, indices: np.ndarray) -> ImageSet:
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(
            targets=self.targets[indices],
            pixels=None if self.pixels is None else self.pixels[indices],
            files=None if self.files is None else [self.files[i] for i in indices],
            truth=None if self.truth is None else self.truth[indices],
        )


@dataclass
class DataBundle:
    """A loaded dataset. `test` is None where the source has no labelled test split (it is carved out).
    `skipped`: (path, reason) of unreadable images left out with data.skip_bad_images."""

    name: str
    classes: list[str]
    train: ImageSet
    test: ImageSet | None
    source: str
    ordinal: bool = False
    notes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unlabelled: ImageSet | None = None  # data.unlabelled_root's images


def unlabelled_folder(root: Path) -> ImageSet:
    """Every image file under `root`, at any depth, with no labels (Intel Image's seg_pred/, say)."""
    if not Path(root).is_dir():
        raise UserError(f"--unlabelled-root {root}: no such folder")
    files = [p for p in walk_files(Path(root)) if is_image_name(p)]
    if not files:
        raise UserError(f"--unlabelled-root {root}: no images (extensions {sorted(IMAGE_EXTENSIONS)})")
    return ImageSet(targets=np.full(len(files), -1), files=files)


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def walk_files(folder: Path) -> list[Path]:
    """Every file under `folder` but hidden ones, sorted, following symlinked folders (each real
    folder once, and none that holds `folder` itself, so a link loop ends) and keeping broken
    symlinks, which the image scan then reports."""
    top = os.path.realpath(folder)
    seen: set[str] = set()
    found: list[Path] = []
    for parent, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(parent)
        if real in seen or (seen and os.path.commonpath([real, top]) == real):
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(parent, name) for name in names if not name.startswith(".")]
    return sorted(found)


def scan_class_folders(root: Path, what: str, classes: list[str] | None = None,
                       ignored: list[Path] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """Files of an ImageFolder-style tree (`root/<class>/<image>`), classes sorted by name; with
    `classes`, the folders must be those. Non-image files are left out and added to `ignored`,
    hidden files and folders are left out."""
    if not root.is_dir():
        raise UserError(f"{root}: {what} folder not found")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise UserError(f"{root}: no class folders in {what}")
    if classes is not None and found != classes:
        raise UserError(f"{root}: class folders {found} differ from the training classes {classes}")
    per_class = []
    for name in found:
        listed = walk_files(root / name)
        per_class.append([p for p in listed if is_image_name(p)])
        if ignored is not None:
            ignored += [p for p in listed if not is_image_name(p)]
    if not any(per_class):
        raise UserError(f"{root}: no images in {what} (extensions {sorted(IMAGE_EXTENSIONS)})")
    if len(found) < 2:
        raise UserError(f"{root}: {what} needs at least 2 classes, found only {found[0]!r}")
    empty = [root / name for name, images in zip(found, per_class) if not images]
    if empty:
        raise UserError(f"{empty[0]}: empty class folder in {what}, no images ({len(empty)} such folder(s))")
    files = [p for images in per_class for p in images]
    labels = [label for label, images in enumerate(per_class) for _ in images]
    return files, labels, found


def image_folder_set(root: Path, what: str, classes: list[str] | None = None,
                     ignored: list[Path] | None = None) -> tuple[ImageSet, list[str]]:
    """An ImageSet from class folders (see scan_class_folders)."""
    files, labels, found = scan_class_folders(root, what, classes, ignored)
    return ImageSet(targets=np.array(labels), files=files), found


def ignored_note(ignored: list[Path], root: Path) -> list[str]:
    """One note for the non-image files a class-folder tree held (none where it held none)."""
    if not ignored:
        return []
    names = [p.relative_to(root) if p.is_relative_to(root) else p for p in ignored]
    return [f"{root}: ignored {len(ignored)} non-image file(s), e.g. {examples(names)}"]
