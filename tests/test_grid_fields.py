"""The grid's lists of fields a stage ignores (reproduce.SSL_IGNORED_FIELDS, SUPERVISED_IGNORED_FIELDS),
checked against the fields the stage really reads.

Two representational cells that differ only in an ignored field share one SSL pretraining, and two
supervised cells that differ only in ignored fields are copies of one run. So an ignored field the
stage does read makes a wrong result, and a field it never reads but the list forgets (as
`method.grad_cosine` was forgotten) makes a grid train the same thing twice. Every config read
during a real (tiny) stage is recorded; a new field must be read, ignored, or explained below.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from fkt import config as config_module
from fkt.config import Config, build_config
from fkt.data.module import FKTDataModule
from fkt.engine import fit_stage, resolved
from fkt.methods import stages
from fkt.reproduce import SSL_IGNORED_FIELDS, SUPERVISED_IGNORED_FIELDS
from fkt.rundir import RunDir

# Read by the engine before a stage runs, and turned into what the stage gets, with the reason.
READ_BEFORE_THE_STAGE = {
    "trainer.epochs": "stages() gives each stage its epochs",
    "trainer.pretrain_epochs": "stages() gives each stage its epochs",
    "method.name": "stages() picks the stages",
    "method.finetune": "stages() freezes the backbone for a linear fine-tune",
    "trainer.compile_mode": "read only with trainer.compile (off here)",
    "method.pl_threshold": "read only with method.pseudo_label (off here)",
}
# The images a stage trains on come from these (FKTDataModule.setup), whatever the stage reads itself.
DATA_FIELDS_THAT_SHAPE_THE_TRAINING_IMAGES = {
    "data.dataset", "data.root", "data.image_size", "data.val_fraction", "data.test_fraction", "data.limit_train",
    "data.split_seed", "data.batch_size", "data.scan_images", "data.skip_bad_images", "data.cache",
    "data.cache_dir", "data.cache_size", "data.unlabelled_root", "data.num_workers", "data.eval_batch_size",
    "data.labelled_classes", "data.pool_mismatch",
}
# A supervised copy is a copy of the whole run: its evaluation and its labelled set come with it.
SUPERVISED_ALSO = {"evaluate", "data.labels_per_class", "data.labelled_fraction", "data.labelled_batch_size",
                   "data.pool_batch_ratio", "data.val_labels_per_class", "arm"}


def leaves(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every config field as a dotted path (a mapping or list field is one leaf)."""
    out = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out += leaves(kind, path + ".")
        else:
            out.append(path)
    return out


def covered(field: str, names) -> bool:
    return any(field == name or field.startswith(name + ".") for name in names)


class Reads:
    """Records each config field read (attribute access on a config section), as a dotted path. A
    section knows its path from the access that reached it; copies keep their original's."""

    def __init__(self, monkeypatch) -> None:
        self.read: set[str] = set()
        self.unplaced: set[str] = set()
        self.paths: dict[int, str] = {}
        self.on = False
        get = BaseModel.__getattribute__
        copy = BaseModel.model_copy
        reads = self

        def getattribute(model: Any, name: str) -> Any:
            value = get(model, name)
            if reads.on and not name.startswith("_") and name in type(model).model_fields:
                base = reads.paths.get(id(model))
                if base is None and not isinstance(model, Config):
                    reads.unplaced.add(f"{type(model).__name__}.{name}")
                path = f"{base}.{name}" if base else name
                if isinstance(value, BaseModel):
                    reads.paths[id(value)] = path
                else:
                    reads.read.add(path)
            return value

        def model_copy(model: Any, *args: Any, **kwargs: Any) -> Any:
            new = copy(model, *args, **kwargs)
            if id(model) in reads.paths:
                reads.paths[id(new)] = reads.paths[id(model)]
            return new

        validate = Config.model_validate.__func__

        def model_validate(cls: type, *args: Any, **kwargs: Any) -> Any:
            """A config being built: its validators' reads check it, they do not use it."""
            was, reads.on = reads.on, False
            try:
                return validate(cls, *args, **kwargs)
            finally:
                reads.on = was

        monkeypatch.setattr(config_module._Strict, "__getattribute__", getattribute)
        monkeypatch.setattr(BaseModel, "model_copy", model_copy)
        monkeypatch.setattr(Config, "model_validate", classmethod(model_validate))


def stage_reads(monkeypatch, tmp_path, data, method: str, stage_index: int) -> set[str]:
    cfg = resolved(build_config({
        "method": {"name": method, "grad_cosine": True},
        "data": {"dataset": "imagefolder", "root": str(data.root), "image_size": 16, "batch_size": 4,
                 "val_fraction": 0.25, "num_workers": 0},
        "trainer": {"accelerator": "cpu", "progress_bar": False, "epochs": 1, "pretrain_epochs": 1,
                    "log_every_n_steps": 1},
        "out": str(tmp_path / "run")}))
    run = RunDir(tmp_path / "run")
    module_data = FKTDataModule(cfg, split_file=run.split)
    module_data.setup()
    plan = stages(cfg)
    reads = Reads(monkeypatch)
    reads.on = True
    try:
        fit_stage(cfg, run, module_data, plan[stage_index], stage_index == len(plan) - 1, None, False)
    finally:
        reads.on = False
    assert not reads.unplaced, f"reads of config sections reached without a path: {reads.unplaced}"
    return reads.read


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from conftest import make_imagefolder

    return make_imagefolder(tmp_path_factory.mktemp("folder"), num_classes=2, train_per_class=6, test_per_class=1)


@pytest.mark.slow
@pytest.mark.parametrize("method, stage_index, ignored, also", [
    ("representational", 0, SSL_IGNORED_FIELDS, set()),
    ("supervised", 0, SUPERVISED_IGNORED_FIELDS, SUPERVISED_ALSO),
], ids=["ssl-pretraining", "supervised"])
def test_ignored_fields_are_never_read_and_every_unread_field_is_ignored(monkeypatch, tmp_path, folder, method,
                                                                         stage_index, ignored, also):
    read = stage_reads(monkeypatch, tmp_path, folder, method, stage_index)
    assert "method.temperature" in read if method == "representational" else "optim.supervised.lr" in read
    wrongly_ignored = sorted(f for f in read if covered(f, ignored))
    assert not wrongly_ignored, f"the stage reads fields its list says it ignores: {wrongly_ignored}"
    explained = set(READ_BEFORE_THE_STAGE) | DATA_FIELDS_THAT_SHAPE_THE_TRAINING_IMAGES | also | {"seed"}
    forgotten = sorted(f for f in leaves() if f not in read and not covered(f, ignored) and not covered(f, explained))
    assert not forgotten, f"fields the stage never reads, missing from its ignored list: {forgotten}"


def test_the_explanations_name_real_fields():
    fields = leaves()
    for name in [*READ_BEFORE_THE_STAGE, *DATA_FIELDS_THAT_SHAPE_THE_TRAINING_IMAGES, *SUPERVISED_ALSO,
                 *SSL_IGNORED_FIELDS, *SUPERVISED_IGNORED_FIELDS]:
        assert any(f == name or f.startswith(name + ".") for f in fields), name


def test_the_recorder_sees_a_read_and_fails_a_forgotten_field(monkeypatch):
    """The check can fail: a read through a copy is seen, and grad_cosine, never read by the SSL
    stage, would be reported as forgotten without its entry in the list."""
    cfg = build_config({})
    reads = Reads(monkeypatch)
    reads.on = True
    settings = cfg.optim.ssl.model_copy(update={"lr": 1.0})
    _ = settings.momentum, cfg.method.fusion
    reads.on = False
    assert reads.read == {"optim.ssl.momentum", "method.fusion"}
    without = tuple(f for f in SSL_IGNORED_FIELDS if f != "method.grad_cosine")
    assert [f for f in leaves() if f == "method.grad_cosine" and not covered(f, without)] == ["method.grad_cosine"]
