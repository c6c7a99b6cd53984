"""What a training step costs, counted where it is spent: one probe step of the method itself.

Image passes are counted by the step's context (`fkt.step.StepContext.encode`) and FLOPs by
`torch.utils.flop_counter.FlopCounterMode`, on one step of a fresh copy of the method's module
on a synthetic batch of the run's shape. The grid plans its compute-matched budgets from these
counts (`passes_per_step`), so nothing keeps a second, hand-written table of what a step does:
an objective that encodes one student view (MoCo) or four is planned as it runs.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from fkt.config import Config
from fkt.data import image_side

PROBE_BACKBONE, PROBE_SIDE = "resnet-tiny", 16  # what planning probes with: passes do not depend on either


@dataclass(frozen=True)
class StepCount:
    """One training step on one device: images through the backbone per loss term, through a
    momentum teacher, and (where measured) forward+backward FLOPs, in all and per term. A term's
    FLOPs are its forward and its own backward; where two terms share a forward (the cross-entropy
    on the SSL view's features) the total counts the shared backward once."""

    passes: dict[str, int]
    teacher_forwards: int
    flops: dict[str, float] = field(default_factory=dict)

    @property
    def image_passes(self) -> int:
        return sum(self.passes.values())


def probe_batch(config: Config, train_data: str, side: int, num_classes: int, device: torch.device) -> tuple:
    """A synthetic batch in the layout a method's stream gives (`FKTDataModule.train_loader`):
    (images, targets), or (pool, pool truth, images, targets) for the joint step with some images unlabelled."""
    gen = torch.Generator().manual_seed(0)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=gen).to(device)

    def targets(n: int) -> torch.Tensor:
        return torch.randint(0, num_classes, (n,), generator=gen).to(device)

    data = config.data
    if train_data == "joint" and data.few_labels:
        return images(data.batch_size), targets(data.batch_size), images(data.labelled_batch), targets(data.labelled_batch)
    n = data.labelled_batch if train_data == "labelled" else data.batch_size
    return images(n), targets(n)


def count_step(module_cls: type, config: Config, num_classes: int, device: torch.device | str = "cpu",
               flops: bool = False, freeze_backbone: bool = False) -> StepCount:
    """One training step of a fresh `module_cls` built from `config`, on a synthetic batch: its
    passes, teacher forwards and, with `flops`, its FLOPs. Leaves every random generator as it was."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        module = module_cls(config=config.to_dict(), num_classes=num_classes, freeze_backbone=freeze_backbone)
        module.to(device).train()
        module.settle_trainable()
        batch = probe_batch(config, module.train_data, image_side(config), num_classes, device)
        module.context.start(0, seed=0)
        if flops:
            spent = step_flops(module, batch)
        else:
            with torch.no_grad():
                module.losses(module.context, batch)
            spent = {}
    ctx = module.context
    return StepCount(dict(ctx.passes), ctx.teacher_forwards, spent)


def step_flops(module: Any, batch: tuple) -> dict[str, float]:
    """Forward+backward FLOPs of one step: "total", and per loss term its forward (the ops from its
    first backbone pass to the next term's) and its own backward."""
    ctx = module.context
    forward: dict[str, float] = {}
    active: list = []  # [term, counter] while one counts

    def close() -> None:
        if active:
            term, counter = active
            counter.__exit__(None, None, None)
            forward[term] = forward.get(term, 0) + counter.get_total_flops()
            active.clear()

    def switch(term: str) -> None:
        close()
        active.extend([term, FlopCounterMode(display=False)])
        active[1].__enter__()

    ctx.on_term = switch
    try:
        switch("")  # what comes before the first pass
        terms = module.losses(ctx, batch)
        loss = module.combine(terms)
    finally:
        close()
        ctx.on_term = None
    params = [p for p in module.parameters() if p.requires_grad]
    spent: dict[str, float] = {}
    for name, value in terms.items():
        with FlopCounterMode(display=False) as counter:
            torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        spent[name] = float(forward.get(name, 0) + counter.get_total_flops())
    with FlopCounterMode(display=False) as counter:
        torch.autograd.grad(loss, params, allow_unused=True)
    spent["total"] = float(sum(forward.values()) + counter.get_total_flops())
    return spent


@functools.lru_cache(maxsize=256)
def _probe_passes(method: str, config_json: str) -> int:
    from fkt.methods import MODULES

    config = Config.model_validate(json.loads(config_json))
    return count_step(MODULES[method], config, num_classes=2).image_passes


def passes_per_step(config: Config, method: str) -> int:
    """Backbone passes one training step of `method` ("functional", "pretrain", "supervised") makes
    with this config's batches, counted on a probe step (a tiny backbone at 16 px: the count does not
    depend on either). Cached: a grid asks for the same few."""
    probe = Config(method=config.method, model=config.model.model_copy(
        update={"backbone": PROBE_BACKBONE, "pretrained_weights": None}), data=config.data.model_copy(
        update={"image_size": PROBE_SIDE, "root": None, "cache_dir": None}))  # nothing else changes a step's passes
    return _probe_passes(method, json.dumps(probe.to_dict(), sort_keys=True))
