"""Intel Image Classification (Kaggle layout: `seg_train/seg_train/<class>`, `seg_test/seg_test/<class>`)."""

from __future__ import annotations

from pathlib import Path

from fkt.data.base import DataBundle, ignored_note, image_folder_set
from fkt.errors import UserError


def split_dir(root: Path, name: str) -> Path:
    """Kaggle nests each split twice (`seg_train/seg_train`); a flattened copy works as well."""
    nested = root / name / name
    return nested if nested.is_dir() else root / name


def load(root: Path | None) -> DataBundle:
    if root is None:
        raise UserError("intel-image: --data-root is required (the folder holding seg_train/ and seg_test/)")
    ignored: list[Path] = []
    train, classes = image_folder_set(split_dir(root, "seg_train"), "seg_train", ignored=ignored)
    test, _ = image_folder_set(split_dir(root, "seg_test"), "seg_test", classes, ignored)  # required, not carved
    return DataBundle("intel-image", classes, train, test, source=str(root), notes=ignored_note(ignored, root))
