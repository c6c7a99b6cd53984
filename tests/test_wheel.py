"""fkt as a package: a built wheel, installed into a fresh virtual environment with no repository on
the path, runs from another folder: --version, datasets, the presets, a tiny train and predict.

The fresh environment borrows the project venv's site-packages (torch is 5 GB) through a .pth line.
A directory named in a .pth file is appended to sys.path, but the .pth files inside it are not read,
so the project's editable install of fkt (a .pth naming src/) stays out: the tests assert both."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from conftest import make_fashion_mnist
from PIL import Image

from fkt import __version__
from fkt.presets import preset_names

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    """A command as a user's shell would run it: no PYTHONPATH, no activated venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args}: {result.stderr[-3000:]}"
    return result


def copy_sources(dest: Path) -> Path:
    """What a build reads, copied: a build in the working tree writes build/ and src/*.egg-info there
    (shared with whoever else builds), and setuptools packs any module an earlier build left in build/lib."""
    shutil.copytree(REPO / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("build")
    source = copy_sources(root / "source")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", root / "dist",
        source, cwd=root)
    (built,) = (root / "dist").glob("fkt-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh(wheel, tmp_path_factory) -> Path:
    """The bin folder of a fresh venv holding the wheel (installed by this venv's pip: no ensurepip, ~6 s)."""
    env = tmp_path_factory.mktemp("fresh") / "venv"
    venv.create(env)
    python = env / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=env).stdout.strip())
    borrowed = dict.fromkeys(sysconfig.get_paths()[kind] for kind in ("purelib", "platlib"))
    (site / "borrowed.pth").write_text("".join(f"{path}\n" for path in borrowed))
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel, cwd=env)
    return env / "bin"


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory) -> Path:
    """A working folder outside the repository."""
    return tmp_path_factory.mktemp("elsewhere")


def test_the_wheel_holds_the_package_and_every_preset(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"fkt/presets/{name}.yaml" for name in preset_names()} | {"fkt/presets/__init__.py"} <= names
    assert all(n.startswith(("fkt/", f"fkt-{__version__}.dist-info/")) for n in names), sorted(names)
    assert not any("__pycache__" in n for n in names)


def test_fkt_and_its_presets_come_from_the_wheel(fresh, elsewhere):
    shown = run(fresh / "python", "-c", "import json, sys, fkt, fkt.presets as p; print(json.dumps("
                "{'fkt': fkt.__file__, 'quick': str(p.find_preset('quick')), 'path': sys.path}))", cwd=elsewhere)
    where = json.loads(shown.stdout)
    assert Path(where["fkt"]).is_relative_to(fresh.parent), where["fkt"]
    assert Path(where["quick"]).is_relative_to(fresh.parent) and Path(where["quick"]).is_file(), where["quick"]
    assert sysconfig.get_paths()["purelib"] in where["path"]  # torch & co. are borrowed ...
    assert str(REPO / "src") not in where["path"], where["path"]  # ... the editable fkt is not


def test_the_installed_commands_run_from_another_folder(fresh, elsewhere):
    assert run(fresh / "fkt", "--version", cwd=elsewhere).stdout.strip() == f"fkt {__version__}"
    assert "fashion-mnist" in run(fresh / "fkt", "datasets", cwd=elsewhere).stdout
    help_text = run(fresh / "fkt", "reproduce", "--help", cwd=elsewhere).stdout
    assert all(name in help_text for name in preset_names())


def test_a_preset_run_then_predict_from_the_installed_wheel(fresh, elsewhere):
    data = make_fashion_mnist(elsewhere / "fm", train_per_class=6, test_per_class=2)
    run(fresh / "fkt", "train", "--preset", "quick", "--method", "supervised", "--data-root", data.root,
        "--backbone", "resnet-tiny", "--limit-train", "40", "--batch-size", "8", "--set", "data.val_fraction=0.2",
        "--set", "evaluate.probes=[]",
        "--no-progress", "--out", "run", cwd=elsewhere)
    assert json.loads((elsewhere / "run" / "metrics.json").read_text())["method"] == "supervised"
    images = elsewhere / "images"
    images.mkdir()
    for i, pixels in enumerate(data.test_pixels[:4]):
        Image.fromarray(pixels).save(images / f"{i}.png")
    run(fresh / "fkt", "predict", "--checkpoint", "run/checkpoints/best.ckpt", "images", "--out", "preds.csv",
        "--no-progress", cwd=elsewhere)
    rows = (elsewhere / "preds.csv").read_text().splitlines()
    assert rows[0].startswith("path,class,probability") and len(rows) == 5, rows
