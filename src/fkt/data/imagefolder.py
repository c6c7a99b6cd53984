"""Any `train/<class>/<image>` tree, with an optional `test/` of the same classes."""

from __future__ import annotations

from pathlib import Path

from fkt.data.base import DataBundle, ignored_note, image_folder_set
from fkt.errors import UserError


def load(root: Path | None) -> DataBundle:
    if root is None:
        raise UserError("imagefolder: --data-root is required (the folder holding train/ and optionally test/)")
    ignored: list[Path] = []
    train, classes = image_folder_set(root / "train", "train", ignored=ignored)
    test = image_folder_set(root / "test", "test", classes, ignored)[0] if (root / "test").is_dir() else None
    notes = ignored_note(ignored, root)
    if test is None:
        notes.append(f"{root}: no test/ folder; a stratified test split is carved from train/")
    return DataBundle("imagefolder", classes, train, test, source=str(root), notes=notes)
