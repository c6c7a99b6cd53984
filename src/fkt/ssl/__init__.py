"""Self-supervised objectives by name; `build_objective` is the one way in."""

from __future__ import annotations

from torch import nn

from fkt.config import Config
from fkt.ssl.base import MomentumObjective, Objective
from fkt.ssl.simclr import SimCLR

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (SimCLR,)}


def check_objective(config: Config) -> None:
    """One line naming the field where the configured objective cannot run; only where a stage uses it."""
    if config.method.name != "supervised":
        OBJECTIVES[config.method.ssl].check(config)


def build_objective(config: Config, backbone: nn.Module, feat_dim: int) -> Objective:
    return OBJECTIVES[config.method.ssl](backbone, feat_dim, config)


__all__ = ["OBJECTIVES", "MomentumObjective", "Objective", "build_objective", "check_objective"]
