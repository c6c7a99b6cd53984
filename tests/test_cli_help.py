"""`fkt train --help` as a new user reads it: every flag says what it does, in the config's own words."""

from __future__ import annotations

import argparse
import re

import pytest
from pydantic import BaseModel

from fkt.cli import build_parser
from fkt.config import Config, field_description


def subparser(name: str) -> argparse.ArgumentParser:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def field_flags(name: str) -> list[argparse.Action]:
    """The flags of `fkt NAME` that set a config field (their dest is the field's dotted name)."""
    flags = []
    for action in subparser(name)._actions:
        dest = action.dest
        if "." in dest or dest == "seed":  # as the CLI reference's "sets" column has it (--out is the command's own)
            flags.append(action)
    return flags


def leaves(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from leaves(field.annotation, f"{prefix}{name}.")
        yield f"{prefix}{name}", field.description


def test_every_config_field_has_a_description():
    missing = [dotted for dotted, description in leaves(Config) if not (description or "").strip()]
    assert not missing, f"fields without description=: {missing}"


@pytest.mark.parametrize("command", ["train", "reproduce"])
def test_every_field_flag_has_its_fields_description_as_help(command):
    flags = field_flags(command)
    assert len(flags) >= 35  # every flag of add_run_flags but --config and --set
    for action in flags:
        text = (action.help or "").replace("%%", "%")
        description = field_description(action.dest)
        assert description and text.startswith(description), (action.option_strings, text)
        assert f"[{action.dest}]" in text or f"[sets {action.dest}=" in text, text


def test_every_train_flag_has_help():
    silent = [a.option_strings for a in subparser("train")._actions if a.option_strings and not a.help]
    assert not silent


def test_a_switch_says_the_value_it_sets():
    by_flag = {a.option_strings[0]: a.help for a in field_flags("train")}
    assert by_flag["--no-cache"].endswith("[sets data.cache=false]")
    assert by_flag["--sync-batchnorm"].endswith("[sets trainer.sync_batchnorm=true]")
    # the default of a field the flag only switches on is said truthfully: on for multi-GPU runs
    assert "None: on for multi-GPU runs, else off" in by_flag["--sync-batchnorm"]


def test_field_description_names_a_wrong_field():
    assert field_description("data.batch_size").startswith("training images a step")
    for wrong in ("data.nope", "data.batch_size.x", "nope"):
        with pytest.raises(KeyError, match=re.escape(wrong)):
            field_description(wrong)


@pytest.mark.no_training
def test_train_help_is_readable(fkt_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    result = fkt_cli("train", "--help")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 100
    assert not re.search(r"[A-Z_]+\.[A-Z_]+", result.stdout)  # placeholders like DATA.BATCH_SIZE
    for section in ("method", "data", "model", "trainer"):  # flags grouped by config section
        assert any(line.startswith(f"{section} (--set {section}.FIELD=VALUE") for line in lines), section
    for action in field_flags("train"):  # each flag's field named in the help, so --set and YAML are one step away
        assert action.dest in result.stdout


@pytest.mark.parametrize("command, function, module_names", [
    ("evaluate", "evaluate_checkpoint", ["fkt.engine", "fkt.evaluate"]),
    ("cam", "cam_from_checkpoints", ["fkt.report.gradcam"]),
])
def test_evaluate_and_cam_pass_skip_bad_images_on(fkt_cli, monkeypatch, tmp_path, command, function, module_names):
    import importlib

    calls = []

    def stand_in(*args, **kwargs):
        calls.append(kwargs)
        return {} if command == "evaluate" else tmp_path / "cam.png"

    for name in module_names:  # wherever the function lives, the command must find the stand-in
        monkeypatch.setattr(importlib.import_module(name), function, stand_in, raising=False)
    extra = ["--out", str(tmp_path / "cam.png")] if command == "cam" else []
    for flags, expected in (([], False), (["--skip-bad-images"], True)):
        result = fkt_cli(command, "--checkpoint", str(tmp_path / "best.ckpt"), *extra, *flags)
        assert result.returncode == 0, result.stderr
        assert calls[-1]["skip_bad_images"] is expected


def test_help_never_breaks_a_preset_name_across_lines(monkeypatch, capsys):
    from fkt.cli import main
    from fkt.presets import preset_names

    monkeypatch.setenv("COLUMNS", "60")  # narrow: every line wraps
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    words = capsys.readouterr().out.replace(",", " ").replace(".", " ").split()
    assert all(name in words for name in preset_names())
