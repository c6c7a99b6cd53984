"""The three methods, each a list of training stages over the shared `Method` module."""

from __future__ import annotations

from dataclasses import dataclass

from fkt.config import Config
from fkt.methods.base import Method
from fkt.methods.functional import Functional
from fkt.methods.representational import Pretrain
from fkt.methods.supervised import Supervised

MODULES: dict[str, type[Method]] = {cls.name: cls for cls in (Supervised, Pretrain, Functional)}
MODULES["simclr"] = Pretrain  # the pretraining stage's name in checkpoints before other objectives


@dataclass(frozen=True)
class Stage:
    name: str
    module: type[Method]
    epochs: int
    init_from: str | None = None  # stage whose final backbone this one starts from
    freeze_backbone: bool = False


def stages(config: Config) -> list[Stage]:
    """How each method trains: functional is one joint stage, representational is two."""
    epochs = config.trainer.epochs
    if config.method.name == "supervised":
        return [Stage("train", Supervised, epochs)]
    if config.method.name == "functional":
        return [Stage("train", Functional, epochs)]
    return [
        Stage("pretrain", Pretrain, config.trainer.pretrain_epochs),
        Stage("finetune", Supervised, epochs, init_from="pretrain",
              freeze_backbone=config.method.finetune == "linear"),
    ]


__all__ = ["MODULES", "Method", "Stage", "stages", "Supervised", "Pretrain", "Functional"]
