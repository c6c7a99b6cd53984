"""What a training step's parts see: the one typed interface between the method and its parts.

An SSL objective, a fusion rule and the methods' own loss terms get a `StepContext`, never the
LightningModule. It draws the step's views from its own `torch.Generator` (seeded per step, so a
view depends on (seed, method, step, rank) and on no other random draw), encodes images through
the backbone and counts every one of those passes per loss term, counts a momentum teacher's
forwards, and knows the step, the epoch fraction and the rank count. Counting here, where the
passes happen, is what makes compute matching exact: the grid plans budgets by running one step
(`fkt.compute`) and reads these counts, so no hand-kept "views per image" can drift.

The Lightning module, the bench's bare loop, the grid's planning probe and the tests all use
this one class.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from fkt.data.strong import StrongView
from fkt.data.transforms import Normalize, SimCLRViews, WeakView


class StepContext:
    """Views, counted encoders and the clock of one training step (see the module's docstring).

    `views`, `weak` and `strong` may be replaced (tests feed fixed views); each is called as
    `f(images, generator)`. A LightningModule holds the view makers as its children too, so
    that they move and cast with it (`Method`). Parts may `record` a diagnostic of the step (a mask
    rate, say), which the module logs; a diagnostic never enters a loss.
    """

    def __init__(self, backbone: nn.Module, image_size: int, memory_format: torch.memory_format = torch.contiguous_format,
                 views: Callable[..., torch.Tensor] | None = None, weak: Callable[..., torch.Tensor] | None = None,
                 normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 strong: Callable[..., torch.Tensor] | None = None) -> None:
        self.backbone = backbone
        self.memory_format = memory_format
        self.simclr = views if views is not None else SimCLRViews(image_size)
        self.weak_view = weak if weak is not None else WeakView()
        self.strong_view = strong if strong is not None else StrongView()
        self.normalize = normalize if normalize is not None else Normalize()
        self.diagnostics: dict[str, torch.Tensor] = {}  # this step's, see `record`
        self.generator: torch.Generator | None = None
        self._seed: int | None = None  # this step's, applied at its first draw (the device is known then)
        self.passes: dict[str, int] = {}  # images through the backbone, per loss term, all ranks together
        self.teacher_forwards = 0  # images through a momentum teacher (forward only, no backward)
        self.steps = 0  # training steps made
        self.step = 0  # the global step: optimizer steps before this one
        self.total_steps: int | None = None  # the stage's, once training starts
        self.steps_per_epoch = 1
        self.world_size = 1
        self.reduce_mean: Callable[[torch.Tensor], torch.Tensor] = lambda value: value  # over ranks, under DDP
        self.on_term: Callable[[str], None] | None = None  # told when encoding moves to another term (FLOPs)
        self._term: str | None = None
        self._device: torch.device | None = None

    # --- the clock -----------------------------------------------------------------------
    def start(self, step: int, seed: int) -> None:
        """Begin a training step: its number and the seed its views are drawn from."""
        self.step, self._seed, self._term = step, seed, None
        self.steps += 1
        self.diagnostics = {}

    @property
    def epoch(self) -> float:
        """Fractional epochs before this step, the same in a resumed run."""
        return self.step / max(1, self.steps_per_epoch)

    # --- views ---------------------------------------------------------------------------
    def random(self, device: torch.device) -> torch.Generator:
        """The step's generator on `device`, seeded at the step's first draw."""
        self.on(device)
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device)
        if self._seed is not None:
            self.generator.manual_seed(self._seed)
            self._seed = None
        return self.generator

    def on(self, device: torch.device) -> None:
        """The view makers' constants (normalisation) on the images' device (once per device)."""
        if device != self._device:
            for part in (self.simclr, self.weak_view, self.strong_view, self.normalize):
                if isinstance(part, nn.Module):
                    part.to(device)
            self._device = device

    def view(self, images: torch.Tensor) -> torch.Tensor:
        """A random SimCLR view of each image (the SSL objectives' views)."""
        return self.simclr(images, self.random(images.device))

    def weak(self, images: torch.Tensor) -> torch.Tensor:
        """A flipped and shifted copy of each image (FixMatch's weak view)."""
        return self.weak_view(images, self.random(images.device))

    def strong(self, images: torch.Tensor) -> torch.Tensor:
        """A RandAugment-and-Cutout copy of each image (FixMatch's strong view)."""
        return self.strong_view(images, self.random(images.device))

    def record(self, name: str, value: torch.Tensor) -> None:
        """A diagnostic of this step, logged by the module beside the loss terms (never a loss)."""
        self.diagnostics[name] = value.detach()

    def clean(self, images: torch.Tensor) -> torch.Tensor:
        """The images themselves, normalised as the views are."""
        self.on(images.device)
        return self.normalize(images)

    # --- counted passes ------------------------------------------------------------------
    def encode(self, images: torch.Tensor, term: str) -> torch.Tensor:
        """Backbone features; every image counts as one pass of `term` (all ranks: equal shards)."""
        if term != self._term:
            self._term = term
            if self.on_term is not None:
                self.on_term(term)
        self.passes[term] = self.passes.get(term, 0) + images.shape[0] * self.world_size
        return self.backbone(images.contiguous(memory_format=self.memory_format))

    def teacher_encode(self, teacher: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """A teacher backbone's features, counted apart from the passes (no backward follows)."""
        self.teacher_forwards += images.shape[0] * self.world_size
        return teacher(images.contiguous(memory_format=self.memory_format))

    @property
    def image_passes(self) -> int:
        return sum(self.passes.values())

    # --- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The counts, and where the last step left the view stream: the next stage's heads are
        initialised from there (`continue_stream`), also in a run resumed between stages."""
        state: dict[str, Any] = {"passes_by_term": dict(self.passes), "teacher_forwards": self.teacher_forwards,
                                 "steps": self.steps}
        if self.generator is not None:
            state["generator_seed"] = self.generator.initial_seed()
            if self.generator.device.type == "cpu":
                state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.passes = dict(state.get("passes_by_term", {}))
        self.teacher_forwards = state.get("teacher_forwards", 0)
        self.steps = state.get("steps", 0)
        if "generator" in state:
            self.generator = torch.Generator()
            self.generator.set_state(state["generator"])
        elif "generator_seed" in state:
            self.generator = torch.Generator().manual_seed(state["generator_seed"])

    def continue_stream(self) -> None:
        """Move torch's global generator to where this stage's views left theirs, before the next
        stage builds its heads. The views drew from the global generator before they had their own;
        continuing from the same point keeps every run's numbers as they were. (A GPU stream seeds
        the global one from the last step's seed: still the same on a resumed run.)"""
        if self.generator is None:
            return
        if self.generator.device.type == "cpu":
            torch.set_rng_state(self.generator.get_state())
        else:
            torch.manual_seed(self.generator.initial_seed())
