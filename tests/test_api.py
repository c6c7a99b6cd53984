"""The Python API a notebook uses: `from fkt import Config, train, evaluate`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from fkt.errors import UserError


def test_import_fkt_and_its_api_names_do_not_import_torch():
    code = ("import sys, fkt; from fkt import Config, train, evaluate; "
            "assert callable(train) and callable(evaluate) and Config.__name__ == 'Config'; "
            "print(sorted(m for m in ('torch', 'pytorch_lightning', 'torchvision') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_fkt_evaluate_stays_the_function_when_the_module_is_imported():
    import fkt
    import fkt.engine  # noqa: F401 - imports the submodule fkt/evaluate.py, which would take the name
    from fkt import api, evaluate
    from fkt.evaluate import classification_metrics  # the module is still there to import from

    assert evaluate is api.evaluate and fkt.evaluate is api.evaluate
    assert callable(classification_metrics)
    with pytest.raises(AttributeError, match="no_such_name"):
        fkt.no_such_name


def test_a_preset_loads_with_overrides_as_the_cli_would_have_it():
    from fkt import Config
    from fkt.cli import build_parser, config_from_args

    config = Config.preset("quick", {"trainer.epochs": 2, "data.batch_size": 32})
    args = build_parser().parse_args(["train", "--preset", "quick", "--epochs", "2", "--batch-size", "32",
                                      "--out", "x"])
    assert config == config_from_args(args)
    config.method.name = "supervised"  # fields are validated on assignment
    with pytest.raises(ValueError, match="MethodConfig"):
        config.method.name = "magic"


def test_config_from_yaml_and_bad_input_in_one_line(tmp_path):
    from fkt import Config

    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"epochs": 3}, "data": {"dataset": "imagefolder"}}))
    config = Config.from_yaml(path, {"data.image_size": 24})
    assert (config.trainer.epochs, config.data.dataset, config.data.image_size) == (3, "imagefolder", 24)
    assert config.data.batch_size == Config().data.batch_size  # every default filled in
    for call, needle in ((lambda: Config.from_yaml(tmp_path / "missing.yaml"), "missing.yaml"),
                         (lambda: Config.preset("no-such-preset"), "no-such-preset"),
                         (lambda: Config.preset("quick", {"trainer.epochs": 0}), "trainer.epochs")):
        with pytest.raises(UserError, match=needle):
            call()


@pytest.mark.no_training
def test_train_needs_a_run_directory():
    from fkt import Config, train

    with pytest.raises(UserError, match="out="):
        train(Config())


@pytest.mark.slow
def test_train_then_evaluate_from_python(make_dataset, tmp_path):
    from fkt import Config, evaluate, train

    data = make_dataset("imagefolder", num_classes=3, train_per_class=8, test_per_class=3)
    config = Config.preset("quick", {"data.dataset": "imagefolder", "data.root": str(data.root),
                                     "data.image_size": 16, "data.batch_size": 8, "data.limit_train": None,
                                     "data.val_fraction": 0.25, "trainer.progress_bar": False})
    config.model.backbone = "resnet-tiny"
    config.method.name = "functional"
    metrics = train(config, out=tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == saved["test"]["accuracy"]
    assert (metrics["method"], metrics["backbone"], metrics["test"]["n"]) == ("functional", "resnet-tiny", 9)
    assert config.out is None  # the caller's config is not changed by out=
    result = evaluate(tmp_path / "run" / "checkpoints" / "best.ckpt", probes=["knn"], out=tmp_path / "eval")
    assert result["test"]["accuracy"] == metrics["test"]["accuracy"]
    assert "knn" in result["probes"]
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["test"]["n"] == 9
