"""APTOS 2019 (Kaggle layout: `train.csv` with id_code,diagnosis and `train_images/<id_code>.png`).

Its own test.csv has no labels, so the labelled test split is carved from train.csv
(stratified, seeded, saved in the run directory).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fkt.data.base import DataBundle, ImageSet, examples, is_image_name
from fkt.errors import UserError

CLASSES = ["0 no DR", "1 mild", "2 moderate", "3 severe", "4 proliferative"]


def read_rows(csv_path: Path) -> list[tuple[str, int]]:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:  # a BOM (Excel) is not part of "id_code"
            reader = csv.DictReader(handle)
            missing = {"id_code", "diagnosis"} - set(reader.fieldnames or [])
            if missing:
                raise UserError(f"{csv_path}: missing column(s) {sorted(missing)}")
            rows = []
            seen: dict[str, int] = {}
            for row in reader:
                line = reader.line_num  # the file's own line number (blank lines skipped by the reader)
                code = (row["id_code"] or "").strip()
                if not code:
                    raise UserError(f"{csv_path}:{line}: empty id_code")
                if code in seen:
                    raise UserError(f"{csv_path}:{line}: id_code {code!r} repeats line {seen[code]}")
                seen[code] = line
                try:
                    label = int(row["diagnosis"])
                except (TypeError, ValueError):
                    raise UserError(f"{csv_path}:{line}: diagnosis {row['diagnosis']!r} is not an integer") from None
                if not 0 <= label < len(CLASSES):
                    raise UserError(f"{csv_path}:{line}: diagnosis {label} outside 0-4")
                rows.append((code, label))
    except OSError as err:
        raise UserError(f"{csv_path}: cannot read ({err.strerror})") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{csv_path}: not a readable CSV file ({err})") from None
    if not rows:
        raise UserError(f"{csv_path}: no rows")
    return rows


def load(root: Path | None) -> DataBundle:
    if root is None:
        raise UserError("aptos2019: --data-root is required (the folder holding train.csv and train_images/)")
    rows = read_rows(root / "train.csv")
    images = root / "train_images"
    if not images.is_dir():
        raise UserError(f"{images}: folder not found (aptos2019 expects train_images/<id_code>.png)")
    on_disk = {p.stem + p.suffix.lower(): p for p in images.iterdir()  # .PNG as well; broken links kept for the scan
               if is_image_name(p) and not p.name.startswith(".") and (p.is_file() or p.is_symlink())}
    files = [on_disk.get(f"{code}.png") for code, _ in rows]
    absent = [images / f"{code}.png" for (code, _), f in zip(rows, files) if f is None]
    if absent:
        raise UserError(f"{absent[0]}: listed in train.csv but not found ({len(absent)} missing in all, "
                        f"e.g. {examples([p.name for p in absent])})")
    unlisted = sorted(set(on_disk.values()) - set(files))
    if unlisted:
        raise UserError(f"{images}: {len(unlisted)} image(s) without a row in train.csv, "
                        f"e.g. {examples([p.name for p in unlisted])}")
    train = ImageSet(targets=np.array([label for _, label in rows]), files=files)
    return DataBundle("aptos2019", CLASSES, train, None, source=str(root), ordinal=True)
