"""The Lightning data module: splits, resized uint8 images, loaders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from fkt.config import Config
from fkt.data import dataset_info, load_dataset
from fkt.data.base import DataBundle, ImageSet
from fkt.data.sampler import EpochSampler, ResumableLoader
from fkt.data.scan import screen_bundle
from fkt.data.splits import load_splits, make_splits, save_splits, stratified_subset
from fkt.errors import UserError
from fkt.io import is_rank_zero


def resize_pixels(pixels: np.ndarray, size: int, chunk: int = 4096) -> torch.Tensor:
    """An in-memory set (N,H,W[,C] uint8) resized once to (N,C,size,size) uint8."""
    x = torch.from_numpy(np.array(pixels))  # a writable copy (IDX buffers are read-only)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if x.shape[-2:] == (size, size):
        return x.contiguous()
    out = [
        F.interpolate(part.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        .round_().clamp_(0, 255).to(torch.uint8)
        for part in x.split(chunk)
    ]
    return torch.cat(out)


def image_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """An RGB image as the uint8 (3, size, size) tensor a model is fed: the one resize that training,
    evaluation and `fkt predict` share for image files, so they cannot drift apart."""
    img = img.resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


class ResizedImages(Dataset):
    """(uint8 RGB image of size x size, label). In-memory sets are resized once, files on access."""

    def __init__(self, images: ImageSet, size: int) -> None:
        self.images = images
        self.size = size
        self.cache = resize_pixels(images.pixels, size) if images.pixels is not None else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.cache is not None:
            x = self.cache[index]
        else:
            x = image_tensor(self.images.image(index, self.size), self.size)
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        return x, int(self.images.targets[index])


def default_workers(in_memory: bool) -> int:
    """No workers for in-memory tensors (indexing is cheaper than IPC); else all but one core."""
    return 0 if in_memory else max(1, min(8, (os.cpu_count() or 2) - 1))


class FKTDataModule(pl.LightningDataModule):
    """Train / val / test for one run. The split is saved to `split_file` and reused when it exists."""

    def __init__(self, config: Config, split_file: Path | None = None) -> None:
        super().__init__()
        self.config = config
        self.split_file = split_file
        self.bundle: DataBundle | None = None
        self.sets: dict[str, ResizedImages] = {}

    @property
    def image_size(self) -> int:
        return self.config.data.image_size or dataset_info(self.config.data.dataset).image_size

    @property
    def classes(self) -> list[str]:
        self.setup()
        return self.bundle.classes

    def setup(self, stage: str | None = None) -> None:
        if self.bundle is not None:
            return
        cfg = self.config.data
        bundle = load_dataset(cfg.dataset, cfg.root)
        for note in bundle.notes:
            print(f"[fkt] {note}", flush=True)
        writes = self.split_file is not None and is_rank_zero()  # other DDP ranks read, never write
        if cfg.scan_images or cfg.skip_bad_images:  # before the split: its indices count the readable images
            screen_bundle(bundle, cfg.skip_bad_images, self.split_file.parent / "bad_images.txt" if writes else None)
        meta = {"dataset": cfg.dataset, "split_seed": cfg.split_seed, "val_fraction": cfg.val_fraction,
                "test_fraction": cfg.test_fraction, "limit_train": cfg.limit_train, "n_source": len(bundle.train)}
        saved = self.split_file is not None and self.split_file.exists()
        if saved:
            splits = load_splits(self.split_file, meta)
        else:
            splits = make_splits(bundle.train.targets, bundle.test is not None, cfg.val_fraction,
                                 cfg.test_fraction, cfg.limit_train, cfg.split_seed)
        test = bundle.test if bundle.test is not None else bundle.train.subset(np.array(splits["test"]))
        parts = {"train": bundle.train.subset(np.array(splits["train"])),
                 "val": bundle.train.subset(np.array(splits["val"])), "test": test}
        if cfg.limit_train is not None and cfg.limit_train > len(parts["train"]):
            note = (f"--limit-train {cfg.limit_train}: the training split has only {len(parts['train'])} images; "
                    "training on all of them")
            print(f"[fkt] {note}", flush=True)
            bundle.notes.append(note)
        if cfg.batch_size > len(parts["train"]):
            raise UserError(f"data.batch_size={cfg.batch_size} is larger than the training split "
                            f"({len(parts['train'])} images)")
        if writes and not saved:  # only once the data is known to be usable
            save_splits(self.split_file, splits, {**meta, "source": bundle.source})
        self.sets = {name: ResizedImages(images, self.image_size) for name, images in parts.items()}
        self.bundle = bundle

    def loader(self, split: str, train: bool = False, limit: int | None = None) -> DataLoader:
        """Evaluation loaders see every image in order (with `limit`, a stratified subset fixed by the
        split seed, the same for every arm and seed); see `train_dataloader` for training."""
        self.setup()
        cfg = self.config.data
        dataset = self.sets[split]
        in_memory = dataset.cache is not None
        if limit is not None and limit < len(dataset):
            dataset = Subset(dataset, stratified_subset(dataset.images.targets, limit, cfg.split_seed).tolist())
        workers = cfg.num_workers if cfg.num_workers is not None else default_workers(in_memory)
        options = dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())
        if not train:
            return DataLoader(dataset, batch_size=cfg.eval_batch_size, **options)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        # A resumable order of (seed, epoch), one shard per rank; full batches only, so that every
        # contrastive batch has the same size and every rank the same number of steps.
        sampler = EpochSampler(len(dataset), self.config.seed, rank, world)
        return ResumableLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                               generator=torch.Generator().manual_seed(self.config.seed), **options)

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
