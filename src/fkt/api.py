"""fkt from Python, for notebooks: the same runs as the command line, with the metrics as a dict.

    from fkt import Config, train, evaluate

    config = Config.preset("quick", {"trainer.epochs": 2})  # or Config.from_yaml("my.yaml")
    config.method.name = "functional"                         # fields are validated on assignment
    metrics = train(config, out="runs/nb")                   # what metrics.json holds
    metrics["test"]["accuracy"]
    evaluate("runs/nb/checkpoints/best.ckpt", probes=["knn"])["probes"]

Nothing here imports torch until a function is called, so `import fkt` stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from fkt.config import Config
from fkt.errors import UserError


def train(config: Config, out: str | Path | None = None, resume: bool = False, trust: bool = False) -> dict[str, Any]:
    """Train `config`'s method into `out` (else `config.out`) and return its metrics.json as a dict.
    As with `fkt train`, a rerun on the same folder resumes (`resume=True` insists on it) and
    checkpoints are read as data unless `trust`. On DDP ranks other than 0 the dict is empty."""
    from fkt.engine import train as train_run

    if out is not None:
        config = config.model_copy(update={"out": Path(out)})
    if config.out is None:
        raise UserError("train(config, out=...): the run directory to write is required")
    return train_run(config, resume=resume, trust=trust)


def evaluate(checkpoint: str | Path, *, dataset: str | None = None, data_root: str | Path | None = None,
             out: str | Path | None = None, probes: Iterable[str] = (), corruptions: bool = False,
             skip_bad_images: bool = False, trust: bool = False) -> dict[str, Any]:
    """A checkpoint's test metrics on its run's own split (as `fkt evaluate`), plus the frozen-backbone
    `probes` ("knn", "linear") and the accuracy under `corruptions` if asked; also written to
    `out`/eval.json when `out` is given. `data_root`: where the data is now, if it moved."""
    from fkt.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(Path(checkpoint), dataset, Path(data_root) if data_root is not None else None,
                               Path(out) if out is not None else None, probes=list(probes),
                               corruptions=corruptions, trust=trust, skip_bad_images=skip_bad_images)


__all__ = ["Config", "evaluate", "train"]
