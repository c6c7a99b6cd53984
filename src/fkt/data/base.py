"""What every dataset loader returns: labelled images, in memory or as files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fkt.errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class ImageSet:
    """Labelled images. `pixels` (N,H,W[,C] uint8) for sets held in memory, `files` otherwise."""

    targets: np.ndarray
    pixels: np.ndarray | None = None
    files: list[Path] | None = None

    def __post_init__(self) -> None:
        self.targets = np.asarray(self.targets, dtype=np.int64)
        n = len(self.pixels) if self.pixels is not None else len(self.files or [])
        if n != len(self.targets):
            raise ValueError(f"{n} images but {len(self.targets)} labels")

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, index: int) -> Image.Image:
        """A PIL image in RGB: grayscale, palette, RGBA and CMYK inputs all become 3 channels here."""
        if self.pixels is not None:
            img = Image.fromarray(self.pixels[index])
        else:
            path = self.files[index]
            try:
                with Image.open(path) as opened:
                    img = opened.convert("RGB")
            except (OSError, ValueError) as err:
                raise UserError(f"{path}: cannot read image ({err})") from None
        return img if img.mode == "RGB" else img.convert("RGB")

    def subset(self, indices: np.ndarray) -> "ImageSet":
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(
            targets=self.targets[indices],
            pixels=None if self.pixels is None else self.pixels[indices],
            files=None if self.files is None else [self.files[i] for i in indices],
        )


@dataclass
class DataBundle:
    """A loaded dataset. `test` is None where the source has no labelled test split (it is carved out)."""

    name: str
    classes: list[str]
    train: ImageSet
    test: ImageSet | None
    source: str
    ordinal: bool = False
    notes: list[str] = field(default_factory=list)


def scan_class_folders(root: Path, what: str) -> tuple[list[Path], list[int], list[str]]:
    """Files of an ImageFolder-style tree (`root/<class>/<image>`), classes sorted by name."""
    if not root.is_dir():
        raise UserError(f"{root}: {what} folder not found")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{root}: no class folders in {what}")
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(
            p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        files += found
        labels += [label] * len(found)
    if not files:
        raise UserError(f"{root}: no images in {what} (extensions {sorted(IMAGE_EXTENSIONS)})")
    return files, labels, classes


def image_folder_set(root: Path, what: str, classes: list[str] | None = None) -> tuple[ImageSet, list[str]]:
    """An ImageSet from class folders; with `classes`, the folders must match them."""
    files, labels, found = scan_class_folders(root, what)
    if classes is not None and found != classes:
        raise UserError(f"{root}: class folders {found} differ from the training classes {classes}")
    return ImageSet(targets=np.array(labels), files=files), found
