"""The Lightning data module: splits, resized uint8 images, loaders."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, default_collate

from fkt.config import Config
from fkt.data import image_side, load_dataset
from fkt.data.base import DataBundle, ImageSet, resized_rgb, unlabelled_folder
from fkt.data.cache import CachedPixels, cache_bundle, cache_folder
from fkt.data.sampler import EpochSampler, JointBatchSampler, ResumableLoader
from fkt.data.scan import screen_bundle
from fkt.data.splits import (OUTSIDE, labelled_subset, load_splits, make_splits, mismatched_pool, per_class_subset,
                              save_splits, stratified_subset, task_labels, task_splits)
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


def chw_tensor(hwc: np.ndarray) -> torch.Tensor:
    """A (H, W, 3) uint8 array as a (3, H, W) tensor of its own (an array may be a read-only memory map)."""
    return torch.from_numpy(np.array(hwc)).permute(2, 0, 1)


def image_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """An RGB image as the uint8 (3, size, size) tensor a model is fed (see base.resized_rgb)."""
    return chw_tensor(resized_rgb(img, size))


class ResizedImages(Dataset):
    """(uint8 RGB image of size x size, label). In-memory sets are resized once, image-cache rows are
    read from the memory map on access (resized if stored larger), files decoded on access."""

    def __init__(self, images: ImageSet, size: int) -> None:
        self.images = images
        self.size = size
        self.mapped = isinstance(images.pixels, CachedPixels)
        self.cache = resize_pixels(images.pixels, size) if images.pixels is not None and not self.mapped else None

    @property
    def in_memory(self) -> bool:
        """Cheaper to index than to pass through loader workers: resized tensors, or cache rows of the right size."""
        return self.cache is not None or (self.mapped and self.images.pixels.shape[1] == self.size)

    def __len__(self) -> int:
        return len(self.images)

    def cached_row(self, index: int) -> torch.Tensor:
        pixels = self.images.pixels
        reason = pixels.reason(index)
        if reason is not None:  # only with data.scan_images=false: as unreadable as the file itself
            raise UserError(f"{self.images.files[index]}: cannot read image ({reason})")
        row = pixels[index]
        if row.shape[0] != self.size:  # data.cache_size: stored larger, resized as a file would be
            return image_tensor(Image.fromarray(row), self.size)
        return chw_tensor(row)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.cache is not None:
            x = self.cache[index]
        elif self.mapped:
            x = self.cached_row(index)
        else:
            x = image_tensor(self.images.image(index, self.size), self.size)
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        return x, int(self.images.targets[index])


def default_workers(in_memory: bool) -> int:
    """No workers for in-memory tensors (indexing is cheaper than IPC); else all but one core."""
    return 0 if in_memory else max(1, min(8, (os.cpu_count() or 2) - 1))


def task_bundle(bundle: DataBundle, task: np.ndarray, names: list[str] | None) -> DataBundle:
    """The bundle as the task sees it (data.labelled_classes): those classes in the order given, the
    training targets remapped (OUTSIDE for the other classes, which only the pool can hold) and the
    test split without the other classes. Without names: the bundle itself."""
    if names is None:
        return bundle
    test = bundle.test
    if test is not None:
        test = test.subset(np.flatnonzero(task[test.targets] >= 0))
        test = replace(test, targets=task[test.targets])
    return replace(bundle, classes=list(names), train=replace(bundle.train, targets=task[bundle.train.targets]),
                   test=test)


def pool_classes(truth: np.ndarray, classes: list[str], sources: np.ndarray, source_classes: list[str]) -> dict:
    """Pool images per class, from their truth: a task class by name, a class outside the task as
    other:<name> (`sources`: the source labels of the pool's first images, the training split's),
    unknown for data.unlabelled_root's images."""
    names = [*classes, *(f"other:{name}" for name in source_classes), "unknown"]
    sources = np.pad(sources, (0, len(truth) - len(sources)))
    slot = np.where(truth >= 0, truth, np.where(truth == OUTSIDE, len(classes) + sources, len(names) - 1))
    return {name: int(n) for name, n in zip(names, np.bincount(slot, minlength=len(names))) if n}


class PoolTruth(Dataset):
    """The pool's images with their withheld classes in place of the -1 labels: the truth the
    pseudo-labels' accuracy is measured against (a diagnostic, never a loss; see fkt.pseudo)."""

    def __init__(self, parts: list[ResizedImages]) -> None:
        self.images = ConcatDataset(parts)
        self.truth = np.concatenate([part.images.truth if part.images.truth is not None
                                     else np.full(len(part), -1) for part in parts])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index][0], int(self.truth[index])


class JointCollate:
    """A joint step's items as (pool images, their truth, labelled images, their labels); a class, so
    workers can pickle it."""

    def __init__(self, pool: int) -> None:
        self.pool = pool

    def __call__(self, items: list) -> tuple[torch.Tensor, ...]:
        images, targets = default_collate(items)
        return images[: self.pool], targets[: self.pool], images[self.pool:], targets[self.pool:]


class FKTDataModule(pl.LightningDataModule):
    """Train / val / test for one run. The split is saved to `split_file` and reused when it exists."""

    def __init__(self, config: Config, split_file: Path | None = None) -> None:
        super().__init__()
        # its own copy: check_sizes caps batches larger than their set on it, and the run uses and saves it
        self.config = config.model_copy(deep=True)
        self.split_file = split_file
        self.bundle: DataBundle | None = None
        self.sets: dict[str, ResizedImages] = {}
        self.pool: list[ResizedImages] = []  # with few labels: the training split unlabelled, data.unlabelled_root

    @property
    def image_size(self) -> int:
        return image_side(self.config)

    @property
    def classes(self) -> list[str]:
        self.setup()
        return self.bundle.classes

    def setup(self, stage: str | None = None) -> None:
        if self.bundle is not None:
            return
        cfg = self.config.data
        bundle = load_dataset(cfg.dataset, cfg.root)
        if cfg.unlabelled_root is not None:
            bundle.unlabelled = unlabelled_folder(cfg.unlabelled_root)
        for note in bundle.notes:
            print(f"[fkt] {note}", flush=True)
        writes = self.split_file is not None and is_rank_zero()  # other DDP ranks read, never write
        bad = None  # the image cache decodes every file anyway: its list of bad ones replaces the scan
        if cfg.cache:
            bad = cache_bundle(bundle, cfg.cache_size or self.image_size, cache_folder(cfg.cache_dir))
        if cfg.scan_images or cfg.skip_bad_images:  # before the split: its indices count the readable images
            screen_bundle(bundle, cfg.skip_bad_images, self.split_file.parent / "bad_images.txt" if writes else None,
                          bad)
        task = self.task(bundle)
        splits, saved, meta = self.splits(bundle)
        source, bundle = bundle, task_bundle(bundle, task, cfg.labelled_classes)
        test = bundle.test if bundle.test is not None else bundle.train.subset(np.array(splits["test"]))
        parts = {"train": bundle.train.subset(np.array(splits.get("labelled", splits["train"]))),
                 "val": bundle.train.subset(np.array(splits["val"])), "test": test}
        # The pool: the whole training split in its own order, whatever the label budget, so that SSL
        # pretraining is the same for every budget (and a grid can share it), then unlabelled_root.
        # With data.labelled_classes, the task's training images and pool_mismatch's other ones (see
        # splits.mismatched_pool).
        indices = np.array(splits.get("pool", splits["train"]), dtype=np.int64)
        pool = [bundle.train.subset(indices).without_labels(), bundle.unlabelled]
        pool = [images for images in pool if images is not None] if cfg.few_labels else []
        self.check_sizes(parts["train"], sum(map(len, pool)) or len(parts["train"]),
                         len(splits["train"]) + len(splits.get("outside", [])), bundle)
        if writes and not saved:  # only once the data is known to be usable
            save_splits(self.split_file, splits, {**meta, "source": bundle.source})
        self.sets = {name: ResizedImages(images, self.image_size) for name, images in parts.items()}
        self.pool = [ResizedImages(images, self.image_size) for images in pool]
        self.sources = (source.train.targets[indices], source.classes)  # for pool_summary's other classes
        self.bundle = bundle

    def task(self, bundle: DataBundle) -> np.ndarray:
        """Each source class's label in the task (see splits.task_labels); a class mismatch without a
        pool to hold it is refused."""
        cfg = self.config.data
        if cfg.pool_mismatch and not cfg.few_labels:
            raise UserError(f"data.pool_mismatch={cfg.pool_mismatch}: every training image is labelled, so there "
                            "is no pool; set data.labels_per_class, data.labelled_fraction below 1 or "
                            "data.unlabelled_root")
        return task_labels(bundle.classes, cfg.labelled_classes)

    def splits(self, bundle: DataBundle) -> tuple[dict[str, list[int]], bool, dict]:
        """The run's split (saved, or made and not yet saved), whether it was saved, and its settings."""
        cfg = self.config.data
        meta = {"dataset": cfg.dataset, "split_seed": cfg.split_seed, "val_fraction": cfg.val_fraction,
                "test_fraction": cfg.test_fraction, "limit_train": cfg.limit_train, "n_source": len(bundle.train),
                "labels_per_class": cfg.labels_per_class, "labelled_fraction": cfg.labelled_fraction,
                "val_labels_per_class": cfg.val_labels_per_class, "labelled_classes": cfg.labelled_classes,
                "pool_mismatch": cfg.pool_mismatch}
        saved = self.split_file is not None and self.split_file.exists()
        if saved:
            splits = load_splits(self.split_file, meta)
            if cfg.withholds_labels and "labelled" not in splits:
                raise UserError(f"{self.split_file}: made with every image labelled; use another --out or delete it")
            return splits, True, meta
        return self.new_splits(bundle), False, meta

    def new_splits(self, bundle: DataBundle) -> dict[str, list[int]]:
        """A fresh split: val (and test) held out over every class; then only the task's images (the
        others 'outside'), the labelled images, k validation images a class and the pool, each seeded by
        data.split_seed, so that every arm and seed of a grid sees the same ones."""
        cfg, targets = self.config.data, bundle.train.targets
        splits = make_splits(targets, bundle.test is not None, cfg.val_fraction, cfg.test_fraction, cfg.limit_train,
                             cfg.split_seed)
        if cfg.labelled_classes:
            splits = task_splits(splits, task_labels(bundle.classes, cfg.labelled_classes), targets)
        if cfg.withholds_labels:
            train = np.array(splits["train"])
            kept = labelled_subset(targets[train], cfg.labels_per_class, cfg.labelled_fraction, cfg.split_seed,
                                   bundle.classes)
            splits["labelled"] = train[kept].tolist()
        if cfg.val_labels_per_class is not None:  # a validation set as small as the labelled one (Oliver et al.)
            val, k = np.array(splits["val"]), cfg.val_labels_per_class
            splits["val"] = val[per_class_subset(
                targets[val], k, [cfg.split_seed, 4], bundle.classes, f"data.val_labels_per_class={k}",
                f"held-out validation images (data.val_fraction={cfg.val_fraction}); raise data.val_fraction")].tolist()
        if cfg.labelled_classes and cfg.few_labels:
            splits["pool"] = mismatched_pool(splits, targets, cfg.pool_mismatch, cfg.split_seed)
        return splits

    def check_sizes(self, labelled: ImageSet, pool: int, train: int, bundle: DataBundle) -> None:
        """A training batch larger than its set is capped to the set (one note), so that the defaults
        (batch 256) fit a folder of a few hundred images; batches that fit are never touched. A capped
        batch too small to train on is refused."""
        cfg = self.config.data
        notes = []
        if cfg.limit_train is not None and cfg.limit_train > train:
            notes.append(f"--limit-train {cfg.limit_train}: the training split has only {train} images; "
                         "training on all of them")
        capped = []
        if cfg.batch_size > pool:
            what = "the training split" + (" and the unlabelled images" if cfg.unlabelled_root else "")
            capped.append(("data.batch_size", cfg.batch_size, pool, what))
            cfg.pool_batch_ratio = None  # resolved into the two batches already; a capped one breaks the ratio
            cfg.batch_size = pool
        if cfg.labelled_batch > len(labelled):
            flag = "data.labelled_batch_size" if cfg.labelled_batch_size else "data.batch_size (the labelled batch)"
            capped.append((flag, cfg.labelled_batch, len(labelled), "the labelled set"))
            cfg.pool_batch_ratio = None
            cfg.labelled_batch_size = len(labelled)
        for flag, wanted, size, what in capped:
            if size < 2:  # batch normalisation, and every SSL objective, needs at least 2 images a batch
                raise UserError(f"{flag}={wanted}: {what} has only {size} image{'s' * (size != 1)}; "
                                "training needs at least 2 a batch")
        if capped:
            notes.append("batches capped to fit the data: " + "; ".join(
                f"{flag}={wanted} is larger than {what} ({size} images): using {size}"
                for flag, wanted, size, what in capped))
        if capped and capped[0][0] == "data.batch_size" and self.config.method.name != "supervised":
            from fkt.ssl import check_objective  # an objective may need more images a step than the capped batch

            try:
                check_objective(self.config)
            except UserError as err:
                raise UserError(f"{err}, after capping to the {pool} training images") from None
        for note in notes:
            print(f"[fkt] {note}", flush=True)
            bundle.notes.append(note)

    @property
    def counts(self) -> dict[str, int]:
        """Training images with and without labels, for tables and metrics.json."""
        self.setup()
        labelled = len(self.sets["train"])
        return {"labelled": labelled, "unlabelled": sum(map(len, self.pool)) - labelled if self.pool else 0}

    @property
    def pool_summary(self) -> dict:
        """The pool's make-up, for metrics.json: data.pool_mismatch and its images per class (see
        pool_classes), so that a result can be read against the mismatch it was trained with."""
        self.setup()
        classes = pool_classes(PoolTruth(self.pool).truth, self.classes, *self.sources) if self.pool else {}
        return {"mismatch": self.config.data.pool_mismatch, "classes": classes}

    @property
    def rank_and_world(self) -> tuple[int, int]:
        """(rank, world size) of the attached trainer; (0, 1) without one."""
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)

    def loader(self, split: str, limit: int | None = None, shard: bool = False) -> DataLoader:
        """Evaluation loaders see every image in order (with `limit`, a stratified subset fixed by the
        split seed, the same for every arm and seed); `train_loader` makes the training ones.

        With `shard` (the Trainer's validation loader) and a DDP trainer attached, rank r of w sees
        only images r, r+w, r+2w, ...: no padding and no duplicates, so shard sizes may differ by
        one, and the metrics, gathered over the ranks (see Method.validation_step), are exactly the
        whole set's. Without it every image is seen: after fit, `fkt train` evaluates the best
        checkpoint on rank 0 alone, while this module still holds the DDP trainer."""
        self.setup()
        dataset = self.sets[split]
        if limit is not None and limit < len(dataset):
            dataset = Subset(dataset, stratified_subset(dataset.images.targets, limit, self.config.data.split_seed).tolist())
        rank, world = self.rank_and_world
        # Fewer images than ranks: no sharding, every rank evaluates them all. An empty shard would run
        # no validation step: that rank would log no metric, and so skip the gathers the other ranks
        # wait in at the epoch's end (and DDP's buffer broadcast in the first forward).
        if shard and world > 1 and len(dataset) >= world:
            dataset = Subset(dataset, range(rank, len(dataset), world))
        return DataLoader(dataset, batch_size=self.config.data.eval_batch_size, **self.options([self.sets[split]]))

    def options(self, parts: list[ResizedImages]) -> dict:
        cfg = self.config.data
        in_memory = all(part.in_memory for part in parts)
        workers = cfg.num_workers if cfg.num_workers is not None else default_workers(in_memory)
        return dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())

    def train_loader(self, stream: str, world: int | None = None) -> DataLoader:
        """A resumable order of (seed, epoch), one shard per rank, full batches only (every contrastive
        batch the same size, every rank the same steps). `stream`: what the method trains on: the
        labelled set, the pool of every training image (SSL), or both at once (functional). With few
        labels an epoch of every stream is one pass over the pool (see JointBatchSampler). `world`: the
        rank count to plan for before a trainer is attached (its length is then any rank's steps an epoch)."""
        self.setup()
        rank, world = self.rank_and_world if world is None else (0, world)
        labelled, seed = self.sets["train"], self.config.seed
        pool = ConcatDataset(self.pool) if self.pool else labelled
        options = {**self.options([labelled, *self.pool]), "generator": torch.Generator().manual_seed(seed)}
        batch = self.config.data.batch_size
        if stream == "pool" or not self.pool:  # every image labelled: one set and batch size for every arm
            return ResumableLoader(pool, batch_size=batch, sampler=EpochSampler(len(pool), seed, rank, world),
                                   drop_last=True, **options)
        joint = stream == "joint"
        sampler = JointBatchSampler(EpochSampler(len(pool), seed, rank, world), batch, len(labelled),
                                    self.config.data.labelled_batch, offset=len(pool) if joint else 0,
                                    with_pool=joint)
        return ResumableLoader(ConcatDataset([PoolTruth(self.pool), labelled]) if joint else labelled, batch_sampler=sampler,
                               collate_fn=JointCollate(batch) if joint else default_collate, **options)

    def train_dataloader(self) -> DataLoader:
        module = self.trainer.lightning_module if self.trainer is not None else None
        return self.train_loader(getattr(module, "train_data", "labelled"))

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", shard=True)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
