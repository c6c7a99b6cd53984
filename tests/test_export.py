"""`fkt export`: the exported model gives the checkpoint's logits, runs where fkt is not imported,
agrees with `fkt predict`, and a failed check leaves nothing behind."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_fashion_mnist, one_error_line
from PIL import Image

from fkt import cli, export
from fkt.data.base import ImageSet
from fkt.data.module import ResizedImages
from fkt.evaluate import checkpoint_data, predict
from fkt.methods import load_module

FORMATS = ["torchscript", "onnx"]
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # deprecated, but it is the format


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A two-stage run (SimCLR pretraining, then the classifier): one best.ckpt and one SimCLR-stage checkpoint."""
    root = tmp_path_factory.mktemp("export")
    data = make_fashion_mnist(root / "fm", num_classes=3, train_per_class=8, test_per_class=4)
    code = cli.main(["train", "--method", "representational", "--dataset", "fashion-mnist", "--data-root",
                     str(data.root), "--epochs", "1", "--pretrain-epochs", "1", "--batch-size", "8",
                     "--accelerator", "cpu", "--no-progress", "--set", "evaluate.probes=[]",
                     "--out", str(root / "run")])
    assert code == 0
    return root / "run"


def fkt_quiet(*args: str) -> tuple[int, str]:
    """`fkt ARGS` in this process for a module-scoped fixture (no capsys there): exit code and stdout."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(list(args))
    return code, stdout.getvalue()


@pytest.fixture(scope="module", params=FORMATS)
def exported(request, run, tmp_path_factory) -> tuple[str, Path, str]:
    """(format, output folder, what `fkt export` printed), exported once per format."""
    out = tmp_path_factory.mktemp(request.param)
    code, stdout = fkt_quiet("export", "--checkpoint", str(run / "checkpoints" / "best.ckpt"),
                             "--format", request.param, "--out", str(out))
    assert code == 0
    return request.param, out, stdout


def model_file(fmt: str, out: Path) -> Path:
    return out / export.FILE_NAMES[fmt]


def load_exported(fmt: str, out: Path):
    """Logits of the exported file for uint8 images, read back as a user would."""
    if fmt == "torchscript":
        model = torch.jit.load(str(model_file(fmt, out)))
        return lambda images: model(images).detach()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model_file(fmt, out)), providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


def assert_close(logits: torch.Tensor, reference: torch.Tensor) -> None:
    limit = export.TOLERANCE * max(1.0, reference.abs().max().item())
    assert logits.dtype == torch.float32 and logits.shape == reference.shape
    assert (logits - reference).abs().max().item() <= limit
    assert torch.equal(logits.argmax(1), reference.argmax(1))


def test_export_writes_the_model_and_model_json(exported, run):
    fmt, out, stdout = exported
    assert stdout.strip().splitlines()[-1] == f"wrote {model_file(fmt, out)} and {out / 'model.json'}"
    assert sorted(p.name for p in out.iterdir()) == sorted([model_file(fmt, out).name, "model.json"])
    info = json.loads((out / "model.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    module = load_module(run / "checkpoints" / "best.ckpt")
    assert info["format"] == fmt and info["file"] == model_file(fmt, out).name
    assert info["input"]["dtype"] == "uint8" and info["input"]["layout"] == "NCHW"
    assert info["input"]["size"] == info["image_size"] == module.cfg.data.image_size == 32
    assert "normalisation is inside the model" in info["input"]["preprocessing"]
    assert info["mean"] == [0.485, 0.456, 0.406] and info["std"] == [0.229, 0.224, 0.225]
    assert info["classes"] == metrics["classes"] and info["classes"][:2] == ["T-shirt/top", "Trouser"]
    assert (info["method"], info["arm"], info["module"]) == ("representational", "representational", module.name)
    assert info["classifier_trained"] is True
    assert info["method_config"] == module.cfg.method.model_dump(mode="json")
    assert (info["dataset"], info["backbone"]) == ("fashion-mnist", module.cfg.model.backbone) == (
        "fashion-mnist", "resnet-tiny")  # the suite's default (tests/conftest.py), as the run's config says
    assert info["run_metrics"]["this_checkpoint"] is True
    assert info["run_metrics"]["test"]["accuracy"] == metrics["test"]["accuracy"]
    assert "per_class" not in info["run_metrics"]["test"] and "confusion_matrix" not in info["run_metrics"]["test"]
    assert info["fkt_version"] and info["torch_version"] == torch.__version__
    check = info["check"]
    assert check["images"] == 12 and check["real_test_images"] is True and len(check["batch_sizes"]) == 2
    assert 0 <= check["max_abs_logit_diff"] <= check["tolerance"]


def test_exported_model_gives_the_checkpoints_logits_at_any_batch_size(exported, run):
    fmt, out, _ = exported
    checkpoint = run / "checkpoints" / "best.ckpt"
    module = load_module(checkpoint)
    images, labels = next(iter(checkpoint_data(module, checkpoint).loader("test")))
    reference, _ = predict(module, [(images, labels)])
    model = load_exported(fmt, out)
    for batch_size in (1, 5, len(images)):
        assert_close(torch.cat([model(chunk) for chunk in images.split(batch_size)]), reference)


def write_images(folder: Path, pixels: np.ndarray) -> list[Path]:
    """Images a user might have: grey and colour PNGs of other sizes than the model's, a JPEG, noise."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    images = [Image.fromarray(p) for p in pixels[:4]]
    images += [Image.fromarray(p).convert("RGB").resize((45, 37)) for p in pixels[4:7]]
    images += [Image.fromarray(rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)) for _ in range(3)]
    paths = [folder / f"{i:02d}.png" for i in range(len(images))]
    for image, path in zip(images, paths):
        image.save(path)
    images[5].save(folder / "photo.jpg", quality=90)
    return paths + [folder / "photo.jpg"]


CHILD = r"""
import json, sys
from pathlib import Path
import numpy as np
from PIL import Image

model_dir, image_dir = Path(sys.argv[1]), Path(sys.argv[2])
info = json.loads((model_dir / "model.json").read_text())
size = info["input"]["size"]
files = sorted(p for p in image_dir.iterdir() if p.suffix in (".png", ".jpg"))
pixels = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)
                   for p in files]).transpose(0, 3, 1, 2).copy()
if info["format"] == "torchscript":
    import torch
    logits = torch.jit.load(str(model_dir / info["file"]))(torch.from_numpy(pixels)).detach().numpy()
else:
    import onnxruntime
    session = onnxruntime.InferenceSession(str(model_dir / info["file"]), providers=["CPUExecutionProvider"])
    logits = session.run(None, {info["input"]["name"]: pixels})[0]
    assert "torch" not in sys.modules
assert "fkt" not in sys.modules, "the exported model needed fkt"
print(json.dumps({"files": [str(p) for p in files], "logits": logits.tolist(),
                  "classes": [info["classes"][i] for i in logits.argmax(1)]}))
"""


def test_exported_model_runs_without_fkt_and_agrees_with_predict(exported, run, tmp_path, fkt_cli):
    fmt, out, _ = exported
    checkpoint = run / "checkpoints" / "best.ckpt"
    module = load_module(checkpoint)
    files = write_images(tmp_path / "images", checkpoint_data(module, checkpoint).bundle.test.pixels)
    script = tmp_path / "classify.py"
    script.write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    child = subprocess.run([sys.executable, str(script), str(out), str(tmp_path / "images")], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-3000:]
    answer = json.loads(child.stdout)
    assert sorted(answer["files"]) == sorted(map(str, files))

    result = fkt_cli("predict", "--checkpoint", str(checkpoint), str(tmp_path / "images"),
                     "--out", str(tmp_path / "preds.csv"), "--no-progress")
    assert result.returncode == 0, result.stderr
    predicted = {row["path"]: row["class"] for row in csv.DictReader(io.StringIO((tmp_path / "preds.csv").read_text()))}
    assert [predicted[f] for f in answer["files"]] == answer["classes"]

    # the child's own resize (PIL, as model.json says) fed the model what fkt feeds the checkpoint
    fkt_images = ResizedImages(ImageSet(targets=np.zeros(len(files)), files=[Path(f) for f in answer["files"]]), 32)
    images = torch.stack([fkt_images[i][0] for i in range(len(files))])
    reference, _ = predict(module, [(images, torch.zeros(len(files), dtype=torch.long))])
    assert_close(torch.tensor(answer["logits"], dtype=torch.float32), reference)


def test_ssl_pretraining_stage_exports_and_says_its_classifier_is_untrained(run, tmp_path, fkt_cli):
    result = fkt_cli("export", "--checkpoint", str(run / "checkpoints" / "pretrain" / "last.ckpt"),
                     "--format", "torchscript", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "SSL pretraining stage" in result.stdout and "classifier_trained: false" in result.stdout
    info = json.loads((tmp_path / "out" / "model.json").read_text())
    assert info["module"] == "pretrain" and info["classifier_trained"] is False
    assert info["run_metrics"]["this_checkpoint"] is False  # the run's metrics are those of best.ckpt
    assert info["check"]["real_test_images"] is True
    assert (tmp_path / "out" / "model.pt").is_file()


def test_data_that_cannot_be_loaded_falls_back_to_random_images(run, tmp_path, fkt_cli):
    (tmp_path / "empty").mkdir()
    result = fkt_cli("export", "--checkpoint", str(run / "checkpoints" / "best.ckpt"), "--format", "torchscript",
                     "--out", str(tmp_path / "out"), "--data-root", str(tmp_path / "empty"))
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if line.startswith("[fkt] ")]
    assert len(notes) == 1 and "16 random images" in notes[0]
    check = json.loads((tmp_path / "out" / "model.json").read_text())["check"]
    assert check["real_test_images"] is False and check["images"] == 16


@pytest.mark.parametrize("exported", ["torchscript"], indirect=True)  # the check is the same for both formats
def test_a_failed_check_keeps_nothing_and_leaves_an_earlier_export(exported, run, tmp_path, fkt_cli, monkeypatch):
    fmt, good, _ = exported
    load = export.LOADERS[fmt]
    monkeypatch.setitem(export.LOADERS, fmt, lambda path: (lambda images: load(path)(images) * 1.01 + 1.0))
    (tmp_path / "earlier").mkdir()
    for name in ("model.pt", "model.json"):
        (tmp_path / "earlier" / name).write_bytes((good / name).read_bytes())
    for out in (tmp_path / "new", tmp_path / "earlier"):
        before = {p.name: p.read_bytes() for p in out.iterdir()} if out.exists() else {}
        result = fkt_cli("export", "--checkpoint", str(run / "checkpoints" / "best.ckpt"), "--format", fmt,
                         "--out", str(out))
        one_error_line(result, "logits differ from the checkpoint's by", "model.pt", code=2)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_onnx_without_onnxruntime_says_what_to_install(run, tmp_path, fkt_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    result = fkt_cli("export", "--checkpoint", str(run / "checkpoints" / "best.ckpt"), "--format", "onnx",
                     "--out", str(tmp_path / "out"))
    one_error_line(result, "onnxruntime", "pip install 'fkt[onnx]'", code=2)
    assert not (tmp_path / "out").exists()


def test_user_mistakes_are_one_line(run, tmp_path, fkt_cli):
    result = fkt_cli("export", "--checkpoint", str(tmp_path / "nope.ckpt"), "--format", "torchscript",
                     "--out", str(tmp_path / "out"))
    one_error_line(result, "--checkpoint", "nope.ckpt", "no such file", code=2)
    (tmp_path / "file").write_text("not a folder")
    result = fkt_cli("export", "--checkpoint", str(run / "checkpoints" / "best.ckpt"), "--format", "torchscript",
                     "--out", str(tmp_path / "file"))
    one_error_line(result, "--out", "not a folder", code=2)
