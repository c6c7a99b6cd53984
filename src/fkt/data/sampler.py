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


class ResumableLoader(DataLoader):
    """A DataLoader whose position in the epoch is part of the checkpoint.

    It counts the batches it hands out; Lightning fetches without prefetching when the length is
    known, so at a checkpoint that count is exactly the batches trained on this epoch.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, EpochSampler):
            raise TypeError("ResumableLoader needs an EpochSampler")
        self.served = 0

    def __iter__(self) -> Iterator[Any]:
        # A generator: the permutation is drawn on the first batch, after Lightning's set_epoch.
        skip = self.sampler.skip
        self.served = skip[1] // self.batch_size if skip is not None and skip[0] == self.sampler.epoch else 0
        for batch in super().__iter__():
            self.served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self.served, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("batch_size") == self.batch_size:
            self.sampler.skip = (state["epoch"], state["batches"] * self.batch_size)
