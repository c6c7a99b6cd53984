"""Datasets by name: each loader is one small module for one on-disk layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fkt.data import aptos, cifar10, fashion_mnist, imagefolder, intel_image
from fkt.data.base import DataBundle, ImageSet
from fkt.errors import UserError


@dataclass(frozen=True)
class DatasetInfo:
    load: Callable[[Path | None], DataBundle]
    image_size: int
    layout: str
    default_root: Path | None = None


DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(fashion_mnist.load, 32, "IDX files (Debian package dataset-fashion-mnist)",
                                 fashion_mnist.SYSTEM_ROOT),
    "cifar10": DatasetInfo(cifar10.load, 32, "torchvision layout: cifar-10-batches-py/"),
    "intel-image": DatasetInfo(intel_image.load, 150, "Kaggle layout: seg_train/seg_train/<class>, seg_test/seg_test/<class>"),
    "aptos2019": DatasetInfo(aptos.load, 224, "Kaggle layout: train.csv (id_code,diagnosis), train_images/<id_code>.png"),
    "imagefolder": DatasetInfo(imagefolder.load, 224, "train/<class>/<image>, optional test/<class>/<image>"),
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(f"--dataset {name}: unknown dataset; choose from {', '.join(DATASETS)}") from None


def image_side(config) -> int:
    """The side images are resized to: `data.image_size`, else the dataset's own default. The one
    place that default is applied (a resolved run config already holds it)."""
    return config.data.image_size or dataset_info(config.data.dataset).image_size


def load_dataset(name: str, root: Path | None) -> DataBundle:
    if root is not None and not Path(root).exists():
        raise UserError(f"--data-root {root}: no such folder")
    return dataset_info(name).load(Path(root) if root is not None else None)


__all__ = ["DATASETS", "DataBundle", "ImageSet", "dataset_info", "image_side", "load_dataset"]
