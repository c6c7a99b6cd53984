"""Did the SSL term learn? A stage's SSL loss at its start and its end, and the rule that warns.

A self-supervised stage can run to its end without learning anything: with the paper's LARS at
lr 0.001, lightly's LARS moves each weight by about 1e-6 of its norm per step, and NT-Xent stays at
ln(2B - 1), the value of a network that ranks the positive no higher than any negative. Nothing
fails; the run's accuracy simply comes from the cross-entropy alone, and a comparison of
"functional" against "representational" then compares arms whose SSL part never trained. So the
module tracks the SSL term over each stage that has one (`LossTrack`), and the engine checks it
(`did_not_learn`) and says so: a line on stderr, `warnings` in metrics.json, a mark in results.md.
"""

from __future__ import annotations

from typing import Any

import torch

WINDOW_FRACTION = 0.1  # the start and the end: each the mean over this fraction of the stage's steps
WINDOW_MIN, WINDOW_MAX = 1, 20
MIN_FALL = 0.05  # of the starting distance above the floor
NEAR_CHANCE = 0.02  # of the chance value


def window(total_steps: int) -> int:
    """Steps averaged at each end of a stage: 10% of them, at least 1, at most 20."""
    return min(WINDOW_MAX, max(WINDOW_MIN, round(WINDOW_FRACTION * total_steps)))


def did_not_learn(start: float | None, end: float, floor: float, chance: float | None) -> str | None:
    """Why a loss that went from `start` to `end` shows no learning, or None where it does.

    Two signs, either enough:
    - it fell by less than 5% of its starting distance above its floor (the lowest value the loss
      can take): (start - end) < 0.05 * (start - floor). Measured against the floor, not against
      zero, so that a loss whose floor is not zero (a negative cosine similarity's is -1) is judged
      by how far it could still go, and a loss far above its floor must fall by more than noise;
    - it ends within 2% of its chance value, the loss of a network that has learnt nothing
      (|end - chance| < 0.02 * chance), where the objective knows it. A loss can fall by more than
      5% from a start above chance (a freshly initialised projector can do worse than chance) and
      still end at chance: the fall alone would pass it.
    A short stage's noise can trip the first sign; the warning says the numbers so a reader can judge.
    `start` is None where the stage was too short to measure one after the objective settled.
    """
    reasons = []
    if start is not None and start - end < MIN_FALL * (start - floor):
        fell = (start - end) / (start - floor) if start > floor else 0.0
        reasons.append(f"fell by {100 * fell:.1f}% of its distance above its floor {floor:g} (under {100 * MIN_FALL:g}%)")
    if chance is not None and abs(end - chance) < NEAR_CHANCE * abs(chance):
        reasons.append(f"ends within {100 * abs(end - chance) / abs(chance):.1f}% of its chance value "
                       f"{chance:.4g} (under {100 * NEAR_CHANCE:g}%)")
    return "; ".join(reasons) or None


def stage_warning(stage: str, progress: dict[str, Any]) -> str | None:
    """One line for a stage whose SSL term did not learn (`progress`: `LossTrack.summary` plus the
    objective's name, floor and chance), or None."""
    reason = did_not_learn(progress["start"], progress["end"], progress["floor"], progress["chance"])
    if reason is None:
        return None
    chance = "unknown" if progress["chance"] is None else f"{progress['chance']:.4f}"
    start = "unmeasured" if progress["start"] is None else f"{progress['start']:.4f}"
    w, steps, settle = progress["window"], progress["steps"], progress.get("settle")
    over = (f"{w} steps from step {settle}, once its queue is full, and the last {w} of {steps}" if settle
            else f"the first and last {w} of {steps} steps")
    return (f"stage '{stage}': the {progress['objective']} SSL term did not learn: start {start}, "
            f"end {progress['end']:.4f}, chance {chance} (means over {over}); it {reason}. "
            f"Check the optimiser it trained with: {progress['optimizer']}")


class LossTrack:
    """The mean of a loss term over the first and the last `window(total)` steps of a stage; the
    first from step `settle` on, once an objective's queue or bank holds real keys (before that its
    loss measures a random queue, and rises as the queue fills whether or not the network learns).

    `add` sums detached tensors on their device (no host sync per step); numbers are read only at
    a checkpoint and at the end. The sums go into the checkpoint, so a resumed stage still knows its
    start; float32 sums survive the round trip exactly, so a resumed run reports the same numbers.
    """

    def __init__(self) -> None:
        self.sums: dict[str, float | torch.Tensor] = {"first": 0.0, "last": 0.0}
        self.counts = {"first": 0, "last": 0}
        self.total = self.settle = 0

    def add(self, step: int, value: torch.Tensor, total: int, settle: int = 0) -> None:
        self.total, self.settle = total, settle
        k = window(total)
        value = value.detach().float()
        first = settle <= step < settle + k and settle + k <= total - k  # never overlapping the last
        for part, inside in (("first", first), ("last", step >= total - k)):
            if inside:
                self.sums[part] = self.sums[part] + value
                self.counts[part] += 1

    def state_dict(self) -> dict[str, Any]:
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "counts": dict(self.counts), "total": self.total,
                "settle": self.settle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = dict(state["sums"])
        self.counts = dict(state["counts"])
        self.total = state["total"]
        self.settle = state.get("settle", 0)  # not in checkpoints from before queues settled

    def summary(self) -> dict[str, Any] | None:
        """{start, end, window, steps, settle}, or None where the end was never seen; start is None
        where the stage ended before a first window after `settle`."""
        if not self.counts["last"]:
            return None
        start = float(self.sums["first"]) / self.counts["first"] if self.counts["first"] else None
        return {"start": start, "end": float(self.sums["last"]) / self.counts["last"],
                "window": window(self.total), "steps": self.total, "settle": self.settle}


def stage_progress(module: Any) -> dict[str, Any] | None:
    """A stage's SSL term at its start and end, with what the no-learning check needs to judge it;
    None for a stage without one."""
    summary = module.ssl_track.summary() if module.ssl is not None else None
    if summary is None:
        return None
    batch = module.global_batch  # the batch whose other images are the negatives (SimCLR gathers them)
    settings = module.optimizer_settings()
    optim = module.cfg.optim
    section = next((f"optim.{name}" for name in ("ssl", "supervised") if getattr(optim, name) is settings), "optim")
    return {"objective": module.ssl.name, **summary, "floor": module.ssl.floor, "chance": module.ssl.chance(batch),
            "optimizer": f"{section} ({settings.name}, lr {settings.lr:g})"}
