"""fkt as a package: a built wheel, installed into a fresh virtual environment with no repository on
the path, runs from another folder: --version, datasets, the presets, a tiny train and predict.

The fresh environment borrows the project venv's site-packages (torch is 5 GB) through a .pth line.
A directory named in a .pth file is appended to sys.path, but the .pth files inside it are not read,
so the project's editable install of fkt stays out; the test asserts fkt is imported from the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from conftest import make_fashion_mnist

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args}: {result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> tuple[Path, Path]:
    """(bin folder of a fresh venv with the wheel installed, a work folder outside the repository)."""
    root = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"),
        str(REPO), cwd=root)
    wheel = next((root / "dist").glob("fkt-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "fkt/presets/quick.yaml" in names and "fkt/presets/__init__.py" in names
    venv.create(root / "venv", with_pip=True)
    bin_dir = root / "venv" / "bin"
    site = Path(run(str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                    cwd=root).stdout.strip())
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel), cwd=root)
    work = root / "elsewhere"
    work.mkdir()
    return bin_dir, work


@pytest.mark.slow
def test_the_installed_wheel_runs_from_another_folder(fresh):
    bin_dir, work = fresh
    where = run(str(bin_dir / "python"), "-c", "import fkt, fkt.presets as p; print(fkt.__file__); "
                "print(p.find_preset('quick'))", cwd=work).stdout.split()
    assert all(str(bin_dir.parent) in line and str(REPO) not in line for line in where), where
    assert run(str(bin_dir / "fkt"), "--version", cwd=work).stdout.strip() == "fkt 0.1.0"
    assert "fashion-mnist" in run(str(bin_dir / "fkt"), "datasets", cwd=work).stdout
    assert "quick" in run(str(bin_dir / "fkt"), "reproduce", "--help", cwd=work).stdout

    data = make_fashion_mnist(work / "fm", train_per_class=6, test_per_class=2)
    run(str(bin_dir / "fkt"), "train", "--preset", "quick", "--method", "supervised", "--data-root", str(data.root),
        "--limit-train", "40", "--batch-size", "8", "--set", "data.val_fraction=0.2", "--no-progress",
        "--out", "run", cwd=work)
    images = work / "images"
    images.mkdir()
    from PIL import Image

    for i, pixels in enumerate(data.test_pixels[:4]):
        Image.fromarray(pixels).save(images / f"{i}.png")
    run(str(bin_dir / "fkt"), "predict", "--checkpoint", "run/checkpoints/best.ckpt", "images", "--out", "preds.csv",
        "--no-progress", cwd=work)
    lines = (work / "preds.csv").read_text().splitlines()
    assert lines[0].startswith("path,class,probability") and len(lines) == 5
