"""Self-supervised objectives by name; `build_objective` is the one way in."""

from __future__ import annotations

from torch import nn

from fkt.config import Config
from fkt.ssl.base import MomentumObjective, Objective
from fkt.ssl.barlowtwins import BarlowTwins
from fkt.ssl.byol import BYOL
from fkt.ssl.dino import DINO
from fkt.ssl.moco import MoCo
from fkt.ssl.nnclr import NNCLR
from fkt.ssl.simclr import SimCLR
from fkt.ssl.simsiam import SimSiam
from fkt.ssl.supcon import SupCon
from fkt.ssl.vicreg import VICReg

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (
    SimCLR, BYOL, SimSiam, BarlowTwins, VICReg, DINO, MoCo, NNCLR, SupCon)}


def check_objective(config: Config) -> None:
    """One line naming the field where the configured objective cannot run; only where a stage uses it."""
    if config.method.name != "supervised":
        OBJECTIVES[config.method.ssl].check(config)


def build_objective(config: Config, backbone: nn.Module, feat_dim: int) -> Objective:
    return OBJECTIVES[config.method.ssl](backbone, feat_dim, config)


__all__ = ["OBJECTIVES", "MomentumObjective", "Objective", "build_objective", "check_objective"]
