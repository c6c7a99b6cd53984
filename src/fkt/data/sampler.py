"""Training data order that survives a kill: a pure function of (seed, epoch, rank), resumable mid-epoch.

Lightning checkpoints a loader that has `state_dict`/`load_state_dict` with the fit loop, so a run
killed after batch k of epoch e restarts at batch k+1 of the same permutation, and the images
it sees afterwards are exactly those an uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
from torch.utils.data import DataLoader, Sampler


class EpochSampler(Sampler[int]):
    """A fresh permutation each epoch, seeded by (seed, epoch); rank r of w takes every w-th index.

    Every rank gets the same number of indices (the remainder is left out for the epoch, as
    `drop_last` does), so DDP ranks always step together.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch = 0
        self.skip: tuple[int, int] | None = None  # (epoch, indices already consumed) after a restore

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size // self.world_size

    def order(self, epoch: int) -> np.ndarray:
        permutation = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        return permutation[: len(self) * self.world_size][self.rank:: self.world_size]

    def __iter__(self) -> Iterator[int]:
        indices = self.order(self.epoch)
        if self.skip is not None:
            epoch, consumed = self.skip
            self.skip = None
            if epoch == self.epoch:
                indices = indices[consumed:]
        return iter(indices.tolist())


class JointBatchSampler(Sampler[list[int]]):
    """Steps of two streams at once: `batch_size` images of the pool in the order of `sampler` (an
    epoch is one pass over the pool), then `labelled_batch` labelled images (indices offset by
    `offset`), drawn from an endless chain of permutations of the labelled set. Without
    `with_pool`, the labelled images alone, in steps as many as the pool's: with few labels every
    arm's epoch is then one pass over the pool, and matching their compute is a ratio of epochs.

    The labelled images of step t depend on (seed, t, rank) alone, so a run resumed mid-epoch sees
    exactly the labelled images an uninterrupted run sees, however often the labelled set cycles."""

    def __init__(self, sampler: EpochSampler, batch_size: int, labelled: int, labelled_batch: int,
                 offset: int, with_pool: bool = True) -> None:
        self.sampler, self.batch_size, self.with_pool = sampler, batch_size, with_pool
        self.labelled, self.labelled_batch, self.offset = labelled, labelled_batch, offset

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def labelled_indices(self, step: int) -> list[int]:
        world, rank = self.sampler.world_size, self.sampler.rank
        start = (step * world + rank) * self.labelled_batch
        positions = np.arange(start, start + self.labelled_batch)
        cycles = {c: np.random.default_rng([self.sampler.seed, 7, c]).permutation(self.labelled)
                  for c in np.unique(positions // self.labelled)}
        return [self.offset + int(cycles[p // self.labelled][p % self.labelled]) for p in positions]

    def __iter__(self) -> Iterator[list[int]]:
        epoch, skip = self.sampler.epoch, self.sampler.skip
        first = skip[1] // self.batch_size if skip is not None and skip[0] == epoch else 0
        pool = list(self.sampler)
        for b in range(len(pool) // self.batch_size):
            step = epoch * len(self) + first + b
            images = pool[b * self.batch_size:(b + 1) * self.batch_size] if self.with_pool else []
            yield images + self.labelled_indices(step)


class ResumableLoader(DataLoader):
    """A DataLoader whose position in the epoch is part of the checkpoint.

    It counts the batches it hands out; Lightning fetches without prefetching when the length is
    known, so at a checkpoint that count is exactly the batches trained on this epoch. Its order is
    an EpochSampler, as the sampler or inside a JointBatchSampler.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        joint = isinstance(self.batch_sampler, JointBatchSampler)
        self.order = self.batch_sampler.sampler if joint else self.sampler
        self.step_size = self.batch_sampler.batch_size if joint else self.batch_size
        if not isinstance(self.order, EpochSampler):
            raise TypeError("ResumableLoader needs an EpochSampler")
        self.served = 0

    def __iter__(self) -> Iterator[Any]:
        # A generator: the permutation is drawn on the first batch, after Lightning's set_epoch.
        skip = self.order.skip
        self.served = skip[1] // self.step_size if skip is not None and skip[0] == self.order.epoch else 0
        for batch in super().__iter__():
            self.served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.order.epoch, "batches": self.served, "batch_size": self.step_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("batch_size") == self.step_size:
            self.order.skip = (state["epoch"], state["batches"] * self.step_size)
