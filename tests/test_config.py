"""The typed config: presets validate, precedence is file < flags < --set, errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fkt.config import Config, build_config, resolve, save_config
from fkt.errors import UserError

from fkt.presets import find_preset, preset_names

CONFIGS = [find_preset(name) for name in preset_names()]


def test_there_are_presets_for_the_paper_and_the_demo():
    names = {p.stem for p in CONFIGS}
    assert {"quick", "paper-cifar10", "paper-intel-image", "paper-aptos2019", "paper-intel-image-resnet18"} <= names


@pytest.mark.resnet18  # the presets as shipped: their backbones are part of what is checked
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_preset_validates(path):
    config = resolve(path, {}, [])
    if path.stem.startswith("paper-"):
        assert config.data.batch_size == 256 and config.trainer.epochs == 100
        assert config.trainer.pretrain_epochs == 100
        faithful = path.stem.removesuffix("-tuned")
        ssl = config.optim.ssl
        if faithful != path.stem:  # SimCLR's own optimiser for every SSL stage; the rest as the faithful preset
            assert (ssl.name, ssl.lr, ssl.momentum, ssl.weight_decay) == ("lars", 0.3, 0.9, 1e-6)
            assert (config.optim.lr_scaling, config.optim.reference_batch, config.optim.functional) == ("linear", 256, "ssl")
            assert (config.optim.schedule, config.optim.warmup_epochs) == ("cosine", 10)
            paper = resolve(path.with_name(f"{faithful}.yaml"), {}, [])
            assert config.model_dump(exclude={"optim"}) == paper.model_dump(exclude={"optim"})
            assert config.optim.supervised == paper.optim.supervised
        else:
            assert (ssl.name, ssl.lr) == ("lars", 0.001)
        assert (config.optim.supervised.name, config.optim.supervised.lr) == ("sgd", 0.025)
        assert config.method.temperature == 0.5
        assert config.model.backbone == ("resnet18" if faithful in ("paper-intel-image-resnet18", "paper-table3") else "resnet50")
        assert config.grid.methods[:2] == ["representational", "functional"]


def test_paper_table2_grid_spans_three_datasets_at_their_sizes():
    from fkt.reproduce import cells

    grid = cells(resolve(CONFIGS[0].parent / "paper-table2.yaml", {}, []), "out")
    assert len(grid) == 3 * 3 * 3
    sizes = {(c.data.dataset, c.data.image_size) for c in grid}
    assert sizes == {("cifar10", 32), ("intel-image", 150), ("aptos2019", 224)}
    matched = [c for c in grid if c.arm == "supervised-matched"]
    assert all(c.method.name == "supervised" and c.trainer.epochs == 300 for c in matched)


def test_precedence_file_then_flags_then_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"epochs": 7}, "data": {"batch_size": 16}}))
    config = resolve(path, {"trainer.epochs": 9}, ["data.batch_size=32", "optim.supervised.lr=0.5"])
    assert config.trainer.epochs == 9
    assert config.data.batch_size == 32
    assert config.optim.supervised.lr == 0.5
    assert config.optim.supervised.name == "sgd"  # the rest of the section keeps its defaults


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"trainer": {"epochz": 3}}, "trainer.epochz: unknown key"),
        ({"data": {"batch_size": 0}}, "data.batch_size"),
        ({"optim": {"supervised": {"name": "sgd", "lr": -1}}}, "optim.supervised.lr"),
        ({"model": {"backbone": "vgg16"}}, "model.backbone"),
        ({"method": {"name": "byol"}}, "method.name"),
    ],
)
def test_bad_values_name_the_field(data, needle):
    with pytest.raises(UserError, match=needle.replace(".", r"\.")):
        build_config(data, "test.yaml")


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("trainer: [unclosed\n")
    with pytest.raises(UserError, match="broken.yaml"):
        resolve(path, {}, [])


def test_saved_config_reloads_to_the_same_config(tmp_path):
    config = build_config({"method": {"name": "representational", "finetune": "linear"}, "seed": 3})
    save_config(config, tmp_path / "config.yaml")
    assert resolve(tmp_path / "config.yaml", {}, []) == config
    assert Config().method.name == "functional"
