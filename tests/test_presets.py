"""Preset lookup: a name is a preset shipped inside the package (found from any folder), a .yaml/.yml
path is the user's own file, and anything else is one line naming what is known.
(That every preset validates is tests/test_config.py::test_every_preset_validates.)"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
from conftest import one_error_line

from fkt.config import resolve
from fkt.errors import UserError
from fkt.presets import find_preset, preset_names

PACKAGE = Path(str(resources.files("fkt.presets")))


def test_the_names_are_the_packaged_yaml_files_sorted():
    names = preset_names()
    assert names == sorted(p.stem for p in PACKAGE.glob("*.yaml"))
    assert {"quick", "paper-table2", "paper-cifar10"} <= set(names) and "__init__" not in names


def test_a_name_is_found_inside_the_package_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quick").write_text("not the preset\n")  # a file of that name here does not shadow it
    path = find_preset("quick")
    assert path == PACKAGE / "quick.yaml" and path.is_file()
    assert resolve(path, {}, []).data.dataset == "fashion-mnist"


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_a_yaml_path_is_the_users_own_file(tmp_path, suffix):
    own = tmp_path / f"quick{suffix}"  # named like a preset, yet the user's file is what is read
    own.write_text((PACKAGE / "quick.yaml").read_text() + "seed: 7\n")
    assert find_preset(str(own)) == own
    assert resolve(find_preset(str(own)), {}, []).seed == 7


@pytest.mark.no_training  # refused before training
def test_unknown_names_and_missing_files_are_refused_in_one_line(tmp_path, fkt_cli):
    unknown = "--preset nope: unknown preset; known: " + ", ".join(preset_names())
    with pytest.raises(UserError, match=f"^{re.escape(unknown)}$"):
        find_preset("nope")
    with pytest.raises(UserError, match=r"^--config missing\.yml: no such file$"):
        find_preset("missing.yml")
    one_error_line(fkt_cli("train", "--preset", "nope", "--out", str(tmp_path / "out")),
                   unknown, code=2)
    one_error_line(fkt_cli("reproduce", "--config", "mine.yaml", "--out", str(tmp_path / "out"), cwd=tmp_path),
                   "--config mine.yaml: no such file", code=2)
    assert not (tmp_path / "out").exists()
