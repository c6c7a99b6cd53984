"""`fkt evaluate` and `fkt cam` on a checkpoint whose test folder has since gained an unreadable file:
refused in one line naming it, as before; with `--skip-bad-images` (as `fkt train` has) the file is
left out, counted, and the rest is measured."""

from __future__ import annotations

import json

import pytest

from conftest import make_imagefolder, one_error_line, write_bad_image


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from fkt.config import build_config
    from fkt.engine import train

    root = tmp_path_factory.mktemp("data")
    data = make_imagefolder(root, num_classes=2, train_per_class=6, test_per_class=3, image_size=16)
    out = tmp_path_factory.mktemp("run") / "run"
    results = train(build_config({
        "method": {"name": "supervised"},
        "data": {"dataset": "imagefolder", "root": str(data.root), "image_size": 16, "batch_size": 4,
                 "val_fraction": 0.25, "num_workers": 0},
        "trainer": {"accelerator": "cpu", "progress_bar": False, "epochs": 1}, "out": str(out)}))
    bad = write_bad_image(data.root / "test" / data.classes[0] / "zz-broken.png", "truncated")
    return out / "checkpoints" / "best.ckpt", bad, results


@pytest.mark.slow
def test_evaluate_refuses_a_new_bad_file_and_skips_it_when_asked(trained, tmp_path, fkt_cli):
    checkpoint, bad, results = trained
    one_error_line(fkt_cli("evaluate", "--checkpoint", str(checkpoint)), bad.name, code=2)
    done = fkt_cli("evaluate", "--checkpoint", str(checkpoint), "--skip-bad-images", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["skipped_images"]["count"] == 1 and bad.name in saved["skipped_images"]["files"][0]
    assert saved["test"]["n"] == results["test"]["n"] == 6  # the readable test images, all of them
    assert saved["test"]["accuracy"] == results["test"]["accuracy"]


@pytest.mark.slow
def test_cam_refuses_a_new_bad_file_and_skips_it_when_asked(trained, tmp_path, fkt_cli):
    checkpoint, bad, _ = trained
    out = tmp_path / "cam.png"
    one_error_line(fkt_cli("cam", "--checkpoint", str(checkpoint), "--out", str(out), "--images", "2"), bad.name,
                   code=2)
    assert not out.exists()
    done = fkt_cli("cam", "--checkpoint", str(checkpoint), "--out", str(out), "--images", "2", "--skip-bad-images")
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.stat().st_size > 0
