"""The layout of a run directory, in one place: every reader and writer of a run folder asks here.

    config.yaml          the resolved config
    split.json           the train/val(/test) indices, reused when the run is repeated
    checkpoints/         best.ckpt (best val accuracy, weights only) and last.ckpt (the whole state, for
                         resuming) of the final stage; checkpoints/<stage>/last.ckpt for earlier stages
    logs/<stage>/        Lightning's CSV log (metrics.csv)
    tb/<stage>/          TensorBoard events
    metrics.json         test metrics of the best checkpoint, val accuracy, compute (image passes and FLOPs
                         per term and per stage; per SSL stage its term's start and end), warnings
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PRETRAIN = "pretrain"  # the representational arm's SSL stage (fkt.methods.stages), with checkpoints of its own


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def best(self) -> Path:
        return self.root / "checkpoints" / "best.ckpt"

    def checkpoints(self, stage: str | None = None) -> Path:
        """The final stage's checkpoint folder (`stage` None), or an earlier stage's."""
        return self.root / "checkpoints" if stage is None else self.root / "checkpoints" / stage

    def last(self, stage: str | None = None) -> Path:
        return self.checkpoints(stage) / "last.ckpt"

    def any_last(self) -> bool:
        """Whether any stage left a checkpoint to resume from."""
        return any((self.root / "checkpoints").rglob("last.ckpt"))

    def relative(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    @staticmethod
    def of(checkpoint: Path) -> "RunDir | None":
        """The run a checkpoint belongs to (`<run>/checkpoints/[<stage>/]x.ckpt`), where that run's folder is
        at hand (it has a split.json or a metrics.json)."""
        checkpoint = Path(checkpoint).resolve()
        for root in (checkpoint.parent.parent, checkpoint.parent.parent.parent):
            run = RunDir(root)
            if run.split.is_file() or run.metrics.is_file():
                return run
        return None
