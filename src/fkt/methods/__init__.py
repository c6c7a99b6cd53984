"""The three methods, each a list of training stages over the shared `Method` module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fkt.checkpointing import read_checkpoint
from fkt.config import Config
from fkt.errors import UserError
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
    epochs: int | float  # a fraction ends mid-epoch (fkt.engine.stage_steps)
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


def load_module(path: Path, trust: bool = False) -> Method:
    """Any fkt checkpoint -> its method module, on the CPU, in eval mode: the one way fkt loads a
    checkpoint for use (evaluation, prediction, export, Grad-CAM, a finished stage). Read as data
    unless `trust`; Lightning's `load_from_checkpoint` builds and fills the module."""
    path = Path(path)
    checkpoint = read_checkpoint(path, trust, lazy=True)  # refuses what is not data, in one line
    info = checkpoint.get("fkt")
    name = info.get("module") if isinstance(info, dict) else None
    if name not in MODULES or "hyper_parameters" not in checkpoint:
        raise UserError(f"--checkpoint {path}: not an fkt checkpoint")
    config = dict(checkpoint["hyper_parameters"]["config"])
    config["model"] = {**config["model"], "pretrained_weights": None}  # the weights are in the checkpoint
    module = MODULES[name].load_from_checkpoint(path, map_location="cpu", weights_only=not trust, config=config)
    return module.eval()


__all__ = ["MODULES", "load_module", "Method", "Stage", "stages", "Supervised", "Pretrain", "Functional"]
