"""`fkt predict` as a user meets it: the same answers as evaluation, every input form, bad files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_cifar10, make_imagefolder, one_error_line, write_bad_image
from PIL import Image

from fkt import cli
from fkt.evaluate import checkpoint_data, predict
from fkt.methods import load_module


def train(data: Path, dataset: str, method: str, out: Path, *extra: str) -> Path:
    code = cli.main(["train", "--method", method, "--dataset", dataset, "--data-root", str(data), "--epochs", "1",
                     "--pretrain-epochs", "1", "--batch-size", "8", "--accelerator", "cpu", "--no-progress",
                     "--set", "evaluate.probes=[]", "--out", str(out), *extra])
    assert code == 0
    return out / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple[Path, Path]:
    """A functional run on an image-folder layout at 32 px: (data root, best checkpoint)."""
    root = tmp_path_factory.mktemp("predict")
    data = make_imagefolder(root / "data", num_classes=3, train_per_class=8, test_per_class=4, image_size=20)
    return data.root, train(data.root, "imagefolder", "functional", root / "run", "--image-size", "32")


def read_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def evaluated_classes(checkpoint: Path) -> tuple[list[str], torch.Tensor, list[Path]]:
    """What evaluation predicts for the checkpoint's test split: classes, probabilities, files."""
    module = load_module(checkpoint)
    data = checkpoint_data(module, checkpoint)
    logits, _ = predict(module, data.loader("test"))
    return [data.classes[i] for i in logits.argmax(1)], logits.softmax(1), data.sets["test"].images.files


def test_predict_agrees_with_evaluate(folder_run, tmp_path, fkt_cli):
    root, checkpoint = folder_run
    out = tmp_path / "preds.csv"
    result = fkt_cli("predict", "--checkpoint", str(checkpoint), str(root / "test"), "--out", str(out),
                     "--top-k", "3", "--no-progress")
    assert result.returncode == 0, result.stderr
    classes, probs, files = evaluated_classes(checkpoint)
    rows = {Path(r["path"]): r for r in read_csv(out.read_text())}
    assert set(rows) == set(files)
    for path, cls, p in zip(files, classes, probs):
        assert rows[path]["class"] == cls
        assert float(rows[path]["probability"]) == pytest.approx(float(p.max()), abs=1e-6)
    assert "classified 12 image(s)" in result.stdout
    counts = {c: classes.count(c) for c in set(classes)}
    assert all(f"{c} {n}" in result.stdout for c, n in counts.items())


def test_predict_on_files_of_an_in_memory_layout_matches_evaluate(tmp_path, fkt_cli):
    """CIFAR-10 is evaluated from its arrays; the same images as PNG files get the same classes."""
    data = make_cifar10(tmp_path / "cifar", num_classes=3, train_per_class=8, test_per_class=3)
    checkpoint = train(data.root, "cifar10", "supervised", tmp_path / "run")
    (tmp_path / "pngs").mkdir()
    for i, pixels in enumerate(data.test_pixels):
        Image.fromarray(pixels).save(tmp_path / "pngs" / f"{i:03d}.png")
    result = fkt_cli("predict", "--checkpoint", str(checkpoint), str(tmp_path / "pngs"), "--no-progress")
    assert result.returncode == 0, result.stderr
    classes, _, _ = evaluated_classes(checkpoint)
    assert [r["class"] for r in read_csv(result.stdout)] == classes
    assert "classified 9 image(s)" in result.stderr  # the CSV went to stdout, the summary to stderr


def test_top_k_json_globs_and_each_file_once(folder_run, tmp_path, fkt_cli):
    root, checkpoint = folder_run
    one = sorted((root / "test").rglob("*.png"))[0]
    result = fkt_cli("predict", "--checkpoint", str(checkpoint), str(one), str(root / "test" / "*" / "*.png"),
                     "--format", "json", "--top-k", "9", "--out", str(tmp_path / "p.json"), "--no-progress")
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "p.json").read_text())
    paths = [p["path"] for p in saved["predictions"]]
    assert len(paths) == len(set(paths)) == len(list((root / "test").glob("*/*.png")))
    for p in saved["predictions"]:
        top = p["top_k"]
        assert len(top) == 3  # clamped to the number of classes
        assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
        assert sum(t["probability"] for t in top) == pytest.approx(1.0, abs=1e-5)
        assert (top[0]["class"], top[0]["probability"]) == (p["class"], p["probability"])


def test_unreadable_files_are_listed_and_skipped(folder_run, tmp_path, fkt_cli):
    root, checkpoint = folder_run
    images = tmp_path / "mixed"
    good = sorted((root / "test").rglob("*.png"))[:3]
    for path in good:
        (images / path.name).parent.mkdir(exist_ok=True)
        (images / path.name).write_bytes(path.read_bytes())
    write_bad_image(images / "broken.png", "truncated")
    write_bad_image(images / "sub" / "notes.jpg", "text")
    out = tmp_path / "preds.csv"
    result = fkt_cli("predict", "--checkpoint", str(checkpoint), str(images), str(tmp_path / "missing.jpg"),
                     "--out", str(out), "--no-progress")
    assert result.returncode == 1
    assert len(read_csv(out.read_text())) == 3
    for name, reason in (("broken.png", "truncated or corrupt"), ("notes.jpg", "not an image"),
                         ("missing.jpg", "no such file")):
        assert any(name in line and reason in line for line in result.stderr.splitlines()), result.stderr
    assert "(3 unreadable skipped)" in result.stdout


def test_nothing_readable_is_one_line_and_writes_nothing(folder_run, tmp_path, fkt_cli):
    _, checkpoint = folder_run
    write_bad_image(tmp_path / "bad" / "a.png", "empty")
    out = tmp_path / "preds.csv"
    result = fkt_cli("predict", "--checkpoint", str(checkpoint), str(tmp_path / "bad"), "--out", str(out))
    one_error_line(result, "no readable image", "a.png", code=2)
    assert not out.exists()
    one_error_line(fkt_cli("predict", "--checkpoint", str(checkpoint), str(tmp_path), "--top-k", "0"),
                   "--top-k", code=2)


def test_the_pretraining_stage_predicts_with_a_note(tmp_path, fkt_cli):
    data = make_imagefolder(tmp_path / "data", num_classes=3, train_per_class=8, test_per_class=2)
    train(data.root, "imagefolder", "representational", tmp_path / "run", "--image-size", "32")
    pretrain = tmp_path / "run" / "checkpoints" / "pretrain" / "last.ckpt"
    result = fkt_cli("predict", "--checkpoint", str(pretrain), str(data.root / "test"), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "never trained" in result.stderr
    assert len(read_csv(result.stdout)) == 6
    assert np.isfinite([float(r["probability"]) for r in read_csv(result.stdout)]).all()


LAYOUTS = [
    ("fashion-mnist", {"num_classes": 3, "train_per_class": 8, "test_per_class": 2}),
    ("cifar10", {"num_classes": 3, "train_per_class": 8, "test_per_class": 2}),
    ("intel-image", {"train_per_class": 4, "test_per_class": 1, "image_size": 40}),
    ("aptos2019", {"images_per_class": 8}),
    ("imagefolder", {"num_classes": 3, "train_per_class": 8, "test_per_class": None}),
]


@pytest.mark.slow
@pytest.mark.parametrize("layout, kwargs", LAYOUTS, ids=[layout for layout, _ in LAYOUTS])
def test_predict_export_and_probes_on_every_layout(make_dataset, tmp_path, fkt_cli, layout, kwargs):
    data = make_dataset(layout, **kwargs)
    checkpoint = train(data.root, layout, "functional", tmp_path / "run", "--image-size", "32",
                       "--set", "data.val_fraction=0.25")
    classes, _, files = evaluated_classes(checkpoint)
    if files is None:  # an in-memory layout: its test images written out as files
        module = load_module(checkpoint)
        files = []
        for i, (image, _) in enumerate(checkpoint_data(module, checkpoint).sets["test"]):
            files.append(tmp_path / "images" / f"{i:03d}.png")
            files[-1].parent.mkdir(exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(files[-1])
    predicted = fkt_cli("predict", "--checkpoint", str(checkpoint), *map(str, files), "--no-progress")
    assert predicted.returncode == 0, predicted.stderr
    assert [r["class"] for r in read_csv(predicted.stdout)] == classes
    evaluated = fkt_cli("evaluate", "--checkpoint", str(checkpoint), "--probe", "knn", "--corruptions")
    assert evaluated.returncode == 0, evaluated.stderr
    shown = json.loads(evaluated.stdout[evaluated.stdout.index("{"):])  # after the data layer's notes
    assert 0 <= shown["probes"]["knn"] <= 1 and 0 <= shown["corruptions"]["mean_accuracy"] <= 1
    exported = fkt_cli("export", "--checkpoint", str(checkpoint), "--format", "torchscript",
                       "--out", str(tmp_path / "model"))
    assert exported.returncode == 0, exported.stderr
    assert json.loads((tmp_path / "model" / "model.json").read_text())["check"]["real_test_images"]
