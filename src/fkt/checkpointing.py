"""What a checkpoint holds and how it is written and read: atomic checkpoints, mid-epoch saves,
Ctrl-C, RNG state, fkt's own run state, and reading any checkpoint as data.

A kill at any moment leaves the last complete `last.ckpt` (written to a temp file, fsynced,
renamed). Rerunning the command restores model, optimizer, scheduler, loop counters, the
data order (`fkt.data.sampler`) and RNG states from it; see docs/faults.md for what is
bit-identical after a resume and why. Every checkpoint fkt reads is read by `read_checkpoint`
(tensors and plain types only), and checkpoints of older fkt versions are brought up to date
in `load_run_state`, the one place that knows their formats.
"""

from __future__ import annotations

import io
import pickle
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Checkpoint

from fkt.errors import UserError
from fkt.io import atomic_write

TRUST_FLAG = "--trust-checkpoint"


def read_checkpoint(path: Path, trust: bool = False, what: str = "--checkpoint", lazy: bool = False) -> dict[str, Any]:
    """A checkpoint's contents as data: tensors and plain types only (`weights_only`), so a file
    from elsewhere cannot run code while it loads. `trust` unpickles in full, for the user who
    knowingly wants that. `lazy` maps the file instead of reading its tensors (a look at its metadata)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=not trust, mmap=lazy)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise UserError(f"{what} {path}: not a readable checkpoint (UnpicklingError)") from None
        found = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line or "Unsupported" in line),
                     "objects other than tensors and plain types")
        raise UserError(f"{what} {path}: refused: it holds Python objects that could run code when loaded "
                        f"({found}); load it only if you trust where it came from, with {TRUST_FLAG}") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for a foreign or damaged file
        raise UserError(f"{what} {path}: not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise UserError(f"{what} {path}: not an fkt checkpoint")
    return state


def save_run_state(module: Any, checkpoint: dict[str, Any]) -> None:
    """fkt's part of a checkpoint (`checkpoint["fkt"]`): which module it is, the step context's counts
    and view stream, the training clock and the SSL term's track."""
    checkpoint["fkt"] = {"module": module.name, "image_passes": module.image_passes, **module.context.state_dict(),
                         "train_seconds": module.elapsed(), "ssl_track": module.ssl_track.state_dict()}


def load_run_state(module: Any, checkpoint: dict[str, Any]) -> None:
    """The inverse of `save_run_state`, for checkpoints of every fkt version (updated in place, before
    Lightning loads the state dict)."""
    info = dict(checkpoint.get("fkt", {}))
    if "passes_by_term" not in info and info.get("image_passes"):  # before passes were split by term
        info["passes_by_term"] = {"unsplit": info["image_passes"]}
    module.context.load_state_dict(info)
    state = checkpoint.get("state_dict", {})
    for key in [k for k in state if k.startswith("projector.")]:  # before objectives were parts
        state["ssl." + key] = state.pop(key)
    module.train_seconds = info.get("train_seconds", 0.0)
    if "ssl_track" in info:  # not in checkpoints from before the no-learning check
        module.ssl_track.load_state_dict(info["ssl_track"])


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save, through a temp file in the same folder, fsync and rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        buffer = io.BytesIO()  # serialise first: a full disk then fails in our write, with the path
        torch.save(checkpoint, buffer)
        atomic_write(Path(path), lambda handle: handle.write(buffer.getbuffer()), mode="wb")


class Interrupted(Exception):
    """Ctrl-C (or another stop signal) during training, after the checkpoint it names was written."""

    def __init__(self, checkpoint: Path, signum: int = signal.SIGINT) -> None:
        super().__init__(f"interrupted; saved {checkpoint}; rerun the same command to resume")
        self.checkpoint = checkpoint
        self.signum = signum


# The signals on which training finishes its step, saves last.ckpt and stops with Interrupted: Ctrl-C,
# and in a SLURM task the scheduler's warning before a preemption or the time limit (fkt.launch.slurm),
# whose own handler then requeues the task.
STOP_SIGNALS: set[int] = {signal.SIGINT}


def rng_states() -> dict[str, Any]:
    """Every generator's state, in types Lightning's weights-only loading accepts (tensors, ints)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states = {"torch": torch.get_rng_state(),
              "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "gauss": float(gauss)},
              "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = states["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


NOTHING, SAVE, STOP = 0, 1, 2


class ResumeState(Checkpoint):
    """Owns `last.ckpt`: saved at every epoch end, mid-epoch every N steps or T minutes, and on
    the first Ctrl-C (or other STOP_SIGNALS). (A Checkpoint callback, so Lightning runs it after the
    best-model one and the saved state includes that epoch's best-model bookkeeping.)

    The first Ctrl-C finishes the current step, saves, and stops with `Interrupted`; a second
    one interrupts at once. Under DDP every rank takes the same decision (a max over ranks),
    because saving a checkpoint is a collective call.
    """

    def __init__(self, path: Path, every_n_steps: int | None, every_minutes: float | None) -> None:
        self.path = Path(path)
        self.every_n_steps = every_n_steps
        self.every_seconds = every_minutes * 60 if every_minutes else None
        self._last_save = time.monotonic()
        self._stop_requested = False
        self._stop_signal = signal.SIGINT
        self._stop_at_epoch_end = False
        self._previous_handlers: dict[int, Any] = {}

    # --- Ctrl-C and other stop signals --------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop_requested, self._stop_signal = True, signum
        signal.signal(signum, self._previous_handlers.pop(signum))  # a second one acts at once
        what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n[fkt] {what}: saving a checkpoint after this step (again to stop at once)", flush=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_save = time.monotonic()
        try:
            for signum in STOP_SIGNALS:
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
        except ValueError:  # not the main thread: leave the signals as they are
            self._previous_handlers.clear()

    def _restore_handler(self) -> None:
        for signum, previous in self._previous_handlers.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, previous)
        self._previous_handlers.clear()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handler()
        if self._stop_requested and self._stop_signal != signal.SIGINT:
            # a scheduler's signal after the last step (the stage is saved and done): still stop, so
            # that its handler requeues the task before the job is killed; Ctrl-C lets the run end
            raise Interrupted(self.path, self._stop_signal)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handler()

    # --- periodic saves ---------------------------------------------------------------------
    def _wish(self, trainer: pl.Trainer) -> int:
        if self._stop_requested:
            return STOP
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0:
            return SAVE
        if self.every_seconds and time.monotonic() - self._last_save >= self.every_seconds:
            return SAVE
        return NOTHING

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        wish = self._wish(trainer)
        if trainer.world_size > 1:
            wish = int(trainer.strategy.reduce(torch.tensor(wish, device=pl_module.device), reduce_op="max"))
        if batch_idx + 1 >= trainer.num_training_batches:
            # The epoch's own checkpoint follows validation; a stop waits for the epoch's end.
            self._stop_at_epoch_end = wish == STOP
        elif wish == SAVE:
            trainer.save_checkpoint(self.path, weights_only=False)  # the whole state, for resuming
            self._last_save = time.monotonic()
        elif wish == STOP:
            trainer.save_checkpoint(self.path, weights_only=False)  # the whole state, for resuming
            raise Interrupted(self.path, self._stop_signal)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # the whole state, for resuming
        self._last_save = time.monotonic()
        if self._stop_at_epoch_end:
            raise Interrupted(self.path, self._stop_signal)

    # --- RNG states in every checkpoint -------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "rng" in state_dict:
            set_rng_states(state_dict["rng"])
