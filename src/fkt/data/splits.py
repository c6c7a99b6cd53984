"""Stratified, seeded splits: train / validation (model selection) / test (touched once)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fkt.errors import UserError
from fkt.io import atomic_write_json

OUTSIDE = -2  # the label (in ImageSet.truth) of an image of a class outside the task (data.labelled_classes)
# Split settings newer than the split file format: a file without one was made at its default.
LATER_SETTINGS = {"val_labels_per_class": None, "labelled_classes": None, "pool_mismatch": 0.0}


def stratified_holdout(targets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held out) with each class held out in proportion, at least one
    per class that has two or more members. Deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        rng.shuffle(members)
        n_held = int(round(fraction * len(members)))
        if len(members) >= 2:
            n_held = min(max(n_held, 1), len(members) - 1)
        else:
            n_held = 0
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def stratified_subset(targets: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Exactly `size` indices (sorted), drawn per class in proportion (the --limit-train subset).

    Each class gets the floor of its proportional share, the images left over go to the classes
    with the largest remainders (largest-remainder rounding, so the total is exact), and where
    `size` allows it every class keeps at least one image. Deterministic for a given seed."""
    targets = np.asarray(targets)
    if size >= len(targets):
        return np.arange(len(targets))
    if size <= 0:
        return np.array([], dtype=np.int64)
    labels, counts = np.unique(targets, return_counts=True)
    quota = size * counts / len(targets)
    take = np.floor(quota).astype(np.int64)
    left = size - int(take.sum())
    order = np.argsort(-(quota - take), kind="stable")  # largest remainder first, ties by class order
    take[order[:left]] += 1
    if size >= len(labels):
        for empty in np.flatnonzero(take == 0):
            take[np.argmax(take)] -= 1  # the largest share gives one image to a class with none
            take[empty] = 1
    rng = np.random.default_rng(seed)
    chosen = []
    for label, k in zip(labels, take):
        members = np.flatnonzero(targets == label)
        rng.shuffle(members)
        chosen.append(members[:k])
    return np.sort(np.concatenate(chosen))


def labelled_subset(targets: np.ndarray, per_class: int | None, fraction: float | None, seed: int,
                    classes: list[str]) -> np.ndarray:
    """Positions (into `targets`) of the training images whose labels are kept: `per_class` of each
    class, or a stratified `fraction` (at least one per class); seeded, so every arm and seed of a
    grid sees the same labelled images."""
    targets = np.asarray(targets)
    if per_class is not None:
        return per_class_subset(targets, per_class, [seed, 3], classes, f"--labels-per-class {per_class}",
                                "training images")
    size = max(int(round(fraction * len(targets))), len(np.unique(targets)))
    return stratified_subset(targets, size, seed + 3)


def per_class_subset(targets: np.ndarray, per_class: int, seed: int | list[int], classes: list[str], flag: str,
                     what: str) -> np.ndarray:
    """Positions (sorted) of exactly `per_class` images of each class present, seeded: the same images
    for every arm and seed. A class with fewer is one line naming `flag`, the class and its `what`."""
    present, counts = np.unique(targets, return_counts=True)
    smallest = int(np.argmin(counts))
    if per_class > counts[smallest]:
        raise UserError(f"{flag}: class {classes[present[smallest]]!r} has only {counts[smallest]} {what}")
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(targets == c))[:per_class] for c in present]))


def task_labels(classes: list[str], names: list[str] | None) -> np.ndarray:
    """Each source class's label in the task (data.labelled_classes, in the order given; None: every
    class as it is), OUTSIDE for a class the classifier has no output for."""
    if names is None:
        return np.arange(len(classes))
    unknown = [name for name in names if name not in classes]
    if unknown:
        raise UserError(f"data.labelled_classes: no class {unknown[0]!r} in this data; its classes are "
                        f"{', '.join(classes)}")
    if len(set(names)) < 2 or len(set(names)) < len(names):
        raise UserError(f"data.labelled_classes={names}: needs at least 2 classes, each named once")
    task = np.full(len(classes), OUTSIDE)
    task[[classes.index(name) for name in names]] = np.arange(len(names))
    return task


def task_splits(splits: dict[str, list[int]], task: np.ndarray, targets: np.ndarray) -> dict[str, list[int]]:
    """The split with only the task's images; the training split's others kept apart as 'outside',
    where the pool's class mismatch is drawn from (and the split file still accounts for every image)."""
    inside = task[targets] >= 0

    def keep(indices: list[int], want: bool) -> list[int]:
        indices = np.array(indices, dtype=np.int64)
        return indices[inside[indices] == want].tolist()

    return {**{name: keep(indices, True) for name, indices in splits.items()}, "outside": keep(splits["train"], False)}


def mismatched_pool(splits: dict[str, list[int]], targets: np.ndarray, mismatch: float, seed: int) -> list[int]:
    """The pool (sorted indices) with class mismatch (Oliver et al. 2018): as many images as the task's
    training split (N), so that only its make-up varies with `mismatch`; round(mismatch * N) drawn from
    the 'outside' images, the rest the labelled images and a draw of the task's other training images.
    Both draws are stratified (each class in its share, see stratified_subset) and seeded."""
    train, outside = np.array(splits["train"], dtype=np.int64), np.array(splits["outside"], dtype=np.int64)
    labelled = np.array(splits.get("labelled", splits["train"]), dtype=np.int64)  # every one, without a budget
    wanted = int(round(mismatch * len(train)))
    if wanted > len(outside):
        raise UserError(f"data.pool_mismatch={mismatch}: wants {wanted} of the pool's {len(train)} images from the "
                        f"classes outside data.labelled_classes, which have only {len(outside)} training images")
    room = len(train) - wanted - len(labelled)
    if room < 0:
        raise UserError(f"data.pool_mismatch={mismatch}: leaves {len(train) - wanted} places in the pool of "
                        f"{len(train)} for the task's classes, fewer than the {len(labelled)} labelled images")
    rest = np.setdiff1d(train, labelled)
    drawn = [rest[stratified_subset(targets[rest], room, [seed, 5])],
             outside[stratified_subset(targets[outside], wanted, [seed, 6])]]
    return np.sort(np.concatenate([labelled, *drawn])).tolist()


def make_splits(train_targets: np.ndarray, has_test: bool, val_fraction: float, test_fraction: float,
                limit_train: int | None, seed: int) -> dict[str, list[int]]:
    """Indices into the source's training set; 'test' only where the source has no test split."""
    indices = np.arange(len(train_targets))
    splits: dict[str, list[int]] = {}
    if not has_test:
        rest, test = stratified_holdout(train_targets, test_fraction, seed)
        splits["test"] = test.tolist()
        indices = rest
    train, val = stratified_holdout(train_targets[indices], val_fraction, seed + 1)
    train, val = indices[train], indices[val]
    if limit_train is not None:
        train = train[stratified_subset(train_targets[train], limit_train, seed + 2)]
    if len(val) == 0:
        raise UserError(f"data.val_fraction={val_fraction}: leaves no validation images "
                        f"from {len(train_targets)} training images")
    splits["train"], splits["val"] = train.tolist(), val.tolist()
    return splits


def save_splits(path: Path, splits: dict[str, list[int]], meta: dict) -> None:
    atomic_write_json(path, {**meta, "counts": {k: len(v) for k, v in splits.items()}, "indices": splits})


def load_splits(path: Path, expected: dict | None = None) -> dict[str, list[int]]:
    """A saved split; with `expected`, it must have been made with the same settings."""
    try:
        saved = json.loads(Path(path).read_text())
        splits = saved["indices"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a readable split file ({err})") from None
    for key, value in (expected or {}).items():
        made = saved.get(key, LATER_SETTINGS.get(key, value))
        if made != value:
            raise UserError(f"{path}: made with {key}={made!r} but this run has {value!r}; "
                            "use another --out or delete the file")
    n = (expected or {}).get("n_source")
    for name, idx in splits.items():
        if n is not None and idx and (min(idx) < 0 or max(idx) >= n):
            raise UserError(f"{path}: '{name}' indices out of range for {n} training images")
    return splits
