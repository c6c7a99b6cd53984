"""The suite's own rules (tests/conftest.py): in-process runs build resnet-tiny unless a test is marked
resnet18; every test that trains is marked slow, by a static look at its code, and a test that trains
unmarked all the same fails at Trainer.fit or at a training subprocess; temporary folders of passing
tests do not stay."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from fkt.config import Config, build_config, resolve
from fkt.presets import find_preset

CONFTEST = Path(__file__).with_name("conftest.py")


def test_in_process_runs_default_to_the_tiny_backbone_and_say_so(tmp_path, backbone):
    from fkt.models import build_backbone

    assert backbone == "resnet-tiny"
    assert Config().model.backbone == "resnet-tiny"
    assert build_config({"model": {"stem": "small"}}).model.backbone == "resnet-tiny"
    assert resolve(None, {}, []).model.backbone == "resnet-tiny"
    net, features = build_backbone(Config().model.backbone)  # what the config says is what is built
    assert features == 128 and sum(p.numel() for p in net.parameters()) < 400_000


def test_packaged_presets_read_tiny_and_an_explicit_choice_wins(tmp_path):
    quick = find_preset("quick")
    assert yaml.safe_load(quick.read_text())["model"]["backbone"] == "resnet18"  # the file as shipped
    assert resolve(quick, {}, []).model.backbone == "resnet-tiny"
    assert resolve(find_preset("paper-cifar10"), {}, []).model.backbone == "resnet-tiny"
    assert resolve(quick, {"model.backbone": "resnet34"}, []).model.backbone == "resnet34"  # --backbone
    assert resolve(quick, {}, ["model.backbone=resnet50"]).model.backbone == "resnet50"  # --set
    own = tmp_path / "own.yaml"
    own.write_text("model:\n  backbone: resnet18\n")
    assert resolve(own, {}, []).model.backbone == "resnet18"  # a file of one's own is not rewritten


def test_fkt_bench_defaults_to_the_tiny_backbone():
    from fkt.cli import build_parser

    assert build_parser().parse_args(["bench"]).backbone == "resnet-tiny"
    assert build_parser().parse_args(["bench", "--backbone", "resnet18"]).backbone == "resnet18"


@pytest.mark.resnet18
def test_a_test_marked_resnet18_gets_the_real_default_and_presets_as_shipped(backbone):
    from fkt.cli import build_parser

    assert backbone == "resnet18"
    assert Config().model.backbone == "resnet18" == build_config({}).model.backbone
    assert resolve(find_preset("quick"), {}, []).model.backbone == "resnet18"
    assert resolve(find_preset("paper-cifar10"), {}, []).model.backbone == "resnet50"
    assert build_parser().parse_args(["bench"]).backbone == "resnet18"


def test_temporary_folders_stay_only_for_failed_tests(pytestconfig):
    assert pytestconfig.getini("tmp_path_retention_policy") == "failed"


def test_home_and_temporary_files_are_inside_pytests_folder(tmp_path_factory, image_cache):
    base = tmp_path_factory.getbasetemp()
    here = [Path.home(), Path(tempfile.gettempdir()), Path(os.environ["MPLCONFIGDIR"]), image_cache]
    child = subprocess.run([sys.executable, "-c", "import pathlib, tempfile; print(pathlib.Path.home()); "
                            "print(tempfile.gettempdir())"], capture_output=True, text=True, check=True)
    for path in here + [Path(line) for line in child.stdout.split()]:
        assert path.is_relative_to(base), path


# A test module for a session of its own (with this conftest): which of its tests the rule marks slow,
# and what the guard does with the two that train in a way the rule cannot see.
PROBE = '''
import subprocess
import sys

import pytest
import torch

from fkt import cli
from fkt.engine import train


def reproduce(out):
    return cli.main(["reproduce", "--out", str(out)])


def command(out):
    return [sys.executable, "-m", "fkt", "train", "--out", str(out)]


@pytest.fixture
def trained(tmp_path):
    return train(None)


def test_calls_train():
    train(None)


def test_through_a_helper(tmp_path):
    reproduce(tmp_path)


def test_through_fkt_cli(fkt_cli):
    fkt_cli("train", "--epochs", "1")


def test_through_a_fixture(trained):
    pass


def test_a_subprocess_of_a_built_command(tmp_path):
    subprocess.run(command(tmp_path) + ["--epochs", "1"])


def test_fit(trainer, module):
    trainer.fit(module)


@pytest.mark.parametrize("args", [["train", "--epochs", "1"]])
def test_a_parametrized_command(fkt_cli, args):
    fkt_cli(*args)


def test_a_local_import():
    from fkt.reproduce import run_grid as grid

    grid(None, None)


def test_bench_in_process():
    from fkt import bench

    bench.run_all(None)


def test_train_mode_and_the_train_split_are_not_training(fkt_cli):
    model = torch.nn.Linear(2, 2)
    model.train()
    assert {"train": 1}["train"] == 1
    assert fkt_cli("datasets").returncode == 0


def test_a_subprocess_that_does_not_train():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


@pytest.mark.no_training
def test_refused_before_training(fkt_cli):
    assert fkt_cli("train", "--epochs", "0").returncode == 2


def test_sneaks_past_the_rule():
    import pytorch_lightning as pl

    getattr(pl.Trainer, "fi" + "t")(None, None)


def test_sneaks_past_the_rule_and_swallows_the_guard():
    import pytorch_lightning as pl

    try:
        getattr(pl.Trainer, "fi" + "t")(None, None)
    except BaseException:
        pass
'''


def test_the_rule_marks_every_training_test_slow_and_the_guard_fails_the_rest(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_probe=PROBE)
    result = pytester.runpytest_inprocess("-m", "not slow", "-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=3, failed=2, deselected=9)
    for name in ("test_train_mode_and_the_train_split_are_not_training", "test_a_subprocess_that_does_not_train",
                 "test_refused_before_training"):
        result.stdout.fnmatch_lines([f"PASSED test_probe.py::{name}"])
    for name in ("test_sneaks_past_the_rule", "test_sneaks_past_the_rule_and_swallows_the_guard"):
        result.stdout.fnmatch_lines([f"test_probe.py::{name} calls pytorch_lightning.Trainer.fit but is not "
                                     "marked slow*"])
        result.stdout.fnmatch_lines([f"FAILED test_probe.py::{name} - *"])


@pytest.mark.no_training  # it calls .fit( and runs `fkt train`, each stopped by the guard before anything runs
def test_the_guard_stops_an_unmarked_test_before_it_trains(training_guard, tmp_path):
    import pytorch_lightning as pl

    with pytest.raises(pytest.fail.Exception, match="calls pytorch_lightning.Trainer.fit but is not marked slow"):
        pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(None)
    with pytest.raises(pytest.fail.Exception, match="runs `fkt train` in a subprocess"):
        subprocess.run([sys.executable, "-m", "fkt", "train", "--help"])
    script = tmp_path / "train.py"
    script.write_text("from fkt.engine import train\n\ntrain(None)\n")
    with pytest.raises(pytest.fail.Exception, match="runs Python code in a subprocess that calls fkt.engine.train"):
        subprocess.run([sys.executable, str(script)])
    assert len(training_guard) == 3
    training_guard.clear()  # seen: this test itself passes
    subprocess.run([sys.executable, "-c", "pass"], check=True)  # other subprocesses run


class Toy:
    """A one-weight Lightning module for one step: the least training there is."""

    @staticmethod
    def fit() -> int:
        import pytorch_lightning as pl
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        class Module(pl.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.weight = torch.nn.Parameter(torch.zeros(1))

            def training_step(self, batch, _):
                return ((self.weight - batch[0]) ** 2).mean()

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu")
        trainer.fit(Module(), DataLoader(TensorDataset(torch.ones(4)), batch_size=4))
        return trainer.global_step


def test_a_slow_test_trains(request):
    assert request.node.get_closest_marker("slow") is not None  # marked by the rule: Toy.fit calls .fit(
    assert Toy.fit() == 1
