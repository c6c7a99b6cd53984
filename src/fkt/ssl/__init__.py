"""Self-supervised objectives by name; `build_objective` is the one way in."""

from __future__ import annotations

from torch import nn

from fkt.config import Config
from fkt.ssl.base import MomentumObjective, Objective
from fkt.ssl.simclr import SimCLR

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (SimCLR,)}


def build_objective(config: Config, backbone: nn.Module, feat_dim: int) -> Objective:
    objective = OBJECTIVES[config.method.ssl](backbone, feat_dim, config)
    objective.check(config)
    return objective


__all__ = ["OBJECTIVES", "MomentumObjective", "Objective", "build_objective"]
