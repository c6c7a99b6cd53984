"""Few labels plus unlabelled images: the labelled subset, the two training streams, the labels that
must never reach a loss, per-term compute and the bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import colour_image, make_fashion_mnist, one_error_line

from fkt.config import build_config
from fkt.data.module import FKTDataModule
from fkt.data.splits import labelled_subset
from fkt.engine import train
from fkt.errors import UserError

CLASSES = [f"c{i}" for i in range(4)]


def test_labels_per_class_is_exact_stratified_and_seeded():
    targets = np.repeat(np.arange(4), [30, 20, 10, 40])
    np.random.default_rng(0).shuffle(targets)
    kept = labelled_subset(targets, 5, None, seed=0, classes=CLASSES)
    assert np.bincount(targets[kept]).tolist() == [5, 5, 5, 5]
    assert np.array_equal(kept, labelled_subset(targets, 5, None, seed=0, classes=CLASSES))
    assert not np.array_equal(kept, labelled_subset(targets, 5, None, seed=1, classes=CLASSES))
    with pytest.raises(UserError, match=r"^--labels-per-class 11: class 'c2' has only 10 training images$"):
        labelled_subset(targets, 11, None, seed=0, classes=CLASSES)


def test_a_labelled_fraction_keeps_each_class_in_proportion_and_at_least_one():
    targets = np.repeat(np.arange(4), [30, 20, 10, 40])
    assert np.bincount(targets[labelled_subset(targets, None, 0.1, 0, CLASSES)]).tolist() == [3, 2, 1, 4]
    assert np.bincount(targets[labelled_subset(targets, None, 0.001, 0, CLASSES)]).tolist() == [1, 1, 1, 1]


def config(root: Path, out: Path | None = None, method: str = "functional", settings: dict | None = None,
           **data) -> object:
    return build_config({
        "method": {"name": method, **(settings or {})},
        "data": {"dataset": "fashion-mnist", "root": str(root), "image_size": 16, "batch_size": 8,
                 "val_fraction": 0.2, "num_workers": 0, **data},
        "model": {"proj_hidden_dim": 32},
        "trainer": {"accelerator": "cpu", "progress_bar": False, "epochs": 2, "pretrain_epochs": 1},
        "out": str(out) if out else None,
    })


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return make_fashion_mnist(tmp_path_factory.mktemp("fm"), num_classes=4, train_per_class=20, test_per_class=5,
                              gz=False)


def test_every_arm_and_seed_sees_the_same_labelled_images_and_the_split_records_them(fmnist, tmp_path):
    seen = []
    for i, (method, seed) in enumerate([("functional", 0), ("supervised", 1), ("representational", 2)]):
        cfg = config(fmnist.root, method=method, labels_per_class=3).model_copy(update={"seed": seed})
        data = FKTDataModule(cfg, split_file=tmp_path / f"split{i}.json")
        data.setup()
        saved = json.loads((tmp_path / f"split{i}.json").read_text())
        assert saved["labels_per_class"] == 3 and len(saved["indices"]["labelled"]) == 12
        assert set(saved["indices"]["labelled"]) <= set(saved["indices"]["train"])
        assert np.bincount(data.sets["train"].images.targets).tolist() == [3, 3, 3, 3]
        assert data.counts == {"labelled": 12, "unlabelled": len(saved["indices"]["train"]) - 12}
        seen.append(saved["indices"]["labelled"])
    assert seen[0] == seen[1] == seen[2]
    other = FKTDataModule(config(fmnist.root, labels_per_class=5), split_file=tmp_path / "split0.json")
    with pytest.raises(UserError, match="made with labels_per_class=3 but this run has 5"):
        other.setup()


def test_the_pool_carries_no_labels_and_the_joint_step_has_both_streams(fmnist):
    data = FKTDataModule(config(fmnist.root, labels_per_class=3, labelled_batch_size=4))
    data.setup()
    assert all(int(t) == -1 for part in data.pool for _, t in part)
    assert sum(map(len, data.pool)) == 12 + data.counts["unlabelled"]  # the labelled images are in the pool too
    pool_images, truth, images, targets = next(iter(data.train_loader("joint")))
    assert pool_images.shape[0] == 8 and images.shape[0] == 4 and (targets >= 0).all()
    assert (truth >= 0).all()  # the withheld classes, for the pseudo-labels' accuracy alone (fkt.pseudo)
    assert len(data.train_loader("joint")) == (12 + data.counts["unlabelled"]) // 8
    labelled_only = list(data.train_loader("labelled"))  # an epoch of as many steps, 4 labelled images each
    assert len(labelled_only) == len(data.train_loader("joint")) and labelled_only[0][0].shape[0] == 4


def test_the_labelled_stream_cycles_through_every_labelled_image_and_depends_on_the_step_alone(fmnist):
    from fkt.data.sampler import EpochSampler, JointBatchSampler

    sampler = JointBatchSampler(EpochSampler(64, seed=0), batch_size=8, labelled=12, labelled_batch=4, offset=64)
    first_cycle = [i for step in range(3) for i in sampler.labelled_indices(step)]
    assert sorted(first_cycle) == list(range(64, 76))  # 12 images in 3 steps of 4: each once
    sampler.sampler.set_epoch(1)  # as Lightning does, through batch_sampler.sampler
    steps = list(sampler)
    sampler.sampler.set_epoch(1)  # as Lightning does, through batch_sampler.sampler
    sampler.sampler.skip = (1, 3 * 8)  # resumed after 3 batches of epoch 1
    assert list(sampler) == steps[3:]


def poisoned(monkeypatch, seed: int) -> None:
    """Give every training image counted as unlabelled a random label, once the split is made."""
    made = FKTDataModule.splits

    def splits(self, bundle):
        result = made(self, bundle)
        withheld = np.array(sorted(set(result[0]["train"]) - set(result[0]["labelled"])))
        bundle.train.targets[withheld] = np.random.default_rng(seed).integers(0, 4, len(withheld))
        return result

    monkeypatch.setattr(FKTDataModule, "splits", splits)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["functional", "representational", "supervised", "supervised+fixmatch",
                                    "functional+fixmatch", "representational+fixmatch"])
def test_labels_of_unlabelled_images_never_reach_a_loss(fmnist, tmp_path, monkeypatch, method):
    """Nor the pseudo-label term's: its accuracy diagnostic reads them, and must change nothing else
    (a low threshold, so that pseudo-labels are made and the diagnostic has something to count)."""
    method, _, pseudo = method.partition("+")
    settings = {"pseudo_label": pseudo, "pl_threshold": 0.3, "ema_decay": 0.9} if pseudo else {}

    def run(out):
        return train(config(fmnist.root, out, method, settings, labels_per_class=3, labelled_batch_size=4))

    clean = run(tmp_path / "clean")
    poisoned(monkeypatch, seed=1)
    dirty = run(tmp_path / "dirty")
    a = torch.load(tmp_path / "clean" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "dirty" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert clean["test"]["accuracy"] == dirty["test"]["accuracy"]
    if pseudo:  # every pool forward counted as the term's; the withheld labels reach the diagnostic, only it
        stage = "finetune" if method == "representational" else "train"
        steps = 2 * (64 // 8)  # 2 epochs of the 64-image pool, 8 a step
        assert clean["compute"]["stages"][stage]["passes_by_term"] == {
            **({"ssl": steps * 2 * 8} if method == "functional" else {}), "ce": steps * 4, "pl": steps * 2 * 8}
        assert clean["pseudo_label"] == "fixmatch" and clean["ema_decay"] == 0.9
        assert all(0 <= float(r) <= 1 for r in logged(tmp_path / "clean", stage, "pseudo/mask_rate_step"))
        assert logged(tmp_path / "clean", stage, "pseudo/accuracy_step") != logged(tmp_path / "dirty", stage,
                                                                                    "pseudo/accuracy_step")
        assert logged(tmp_path / "clean", stage, "train/pl") == logged(tmp_path / "dirty", stage, "train/pl")


def logged(run_dir: Path, stage: str, column: str) -> list[str]:
    import csv

    with open(run_dir / "logs" / stage / "metrics.csv") as f:
        return [row[column] for row in csv.DictReader(f) if row.get(column)]


def test_the_poison_does_change_the_labels_it_is_meant_to(fmnist, monkeypatch):
    """The control for the test above: the poisoned split's withheld labels really differ."""
    poisoned(monkeypatch, seed=1)
    data = FKTDataModule(config(fmnist.root, labels_per_class=3))
    data.setup()
    assert np.bincount(data.sets["train"].images.targets).tolist() == [3, 3, 3, 3]
    split = data.splits(data.bundle)[0]
    withheld = sorted(set(split["train"]) - set(split["labelled"]))
    assert (data.bundle.train.targets[withheld] != make_fashion_mnist_labels(fmnist)[withheld]).any()


def make_fashion_mnist_labels(generated) -> np.ndarray:
    from fkt.data.fashion_mnist import load

    return load(generated.root).train.targets


@pytest.mark.slow
def test_passes_are_counted_per_loss_term(fmnist, tmp_path):
    cfg = config(fmnist.root, tmp_path / "f", labels_per_class=3, labelled_batch_size=4)
    results = train(cfg)
    pool = results["images"]["labelled"] + results["images"]["unlabelled"]
    steps = 2 * (pool // 8)  # 2 epochs over the pool
    assert results["images"]["labelled"] == 12
    assert results["compute"]["passes_by_term"] == {"ssl": steps * 8 * 2, "ce": steps * 4}
    assert results["compute"]["image_passes"] == steps * (8 * 2 + 4)
    rep = train(config(fmnist.root, tmp_path / "r", method="representational", labels_per_class=3,
                       labelled_batch_size=4))["compute"]["stages"]
    assert rep["pretrain"]["passes_by_term"] == {"ssl": (pool // 8) * 8 * 2}
    assert rep["finetune"]["passes_by_term"] == {"ce": 2 * (pool // 8) * 4}  # an epoch: a pass over the pool


@pytest.mark.slow
def test_unlabelled_root_images_join_the_pool_and_bad_ones_are_screened(make_dataset, tmp_path):
    data = make_dataset("imagefolder", num_classes=3, train_per_class=6, test_per_class=2)
    extra = tmp_path / "extra" / "deep"
    extra.mkdir(parents=True)
    for i in range(10):
        colour_image(i % 3, 3, (20, 18)).save(extra / f"u{i}.png")
    (extra / "notes.txt").write_text("not an image")
    cfg = build_config({"method": {"name": "functional"},
                        "data": {"dataset": "imagefolder", "root": str(data.root), "image_size": 16, "batch_size": 8,
                                 "val_fraction": 0.25, "num_workers": 0, "unlabelled_root": str(tmp_path / "extra")},
                        "model": {"proj_hidden_dim": 32},
                        "trainer": {"accelerator": "cpu", "progress_bar": False, "epochs": 1},
                        "out": str(tmp_path / "run")})
    results = train(cfg)
    assert results["images"]["unlabelled"] == 10 and results["images"]["labelled"] == 12
    (extra / "u3.png").write_bytes(b"broken")
    with pytest.raises(UserError, match=r"1 unreadable image file\(s\): .*u3\.png"):
        train(cfg.model_copy(update={"out": tmp_path / "run2"}))
    cfg.data.skip_bad_images = True
    assert train(cfg.model_copy(update={"out": tmp_path / "run3"}))["images"]["unlabelled"] == 9


@pytest.mark.parametrize("flags, needles", [
    (["--labels-per-class", "17"], ["--labels-per-class 17: class", "has only 16 training images"]),
    (["--labelled-fraction", "0"], ["data.labelled_fraction", "greater than 0"]),
    (["--labelled-fraction", "1.5"], ["data.labelled_fraction", "less than or equal to 1"]),
    (["--labels-per-class", "2", "--labelled-fraction", "0.5"], ["labels_per_class or labelled_fraction"]),
])  # a labelled batch larger than the labelled set is capped to it: tests/test_own_data.py
def test_bad_label_budgets_are_one_line_and_write_nothing(fmnist, tmp_path, fkt_cli, flags, needles):
    out = tmp_path / "out"
    result = fkt_cli("train", "--dataset", "fashion-mnist", "--data-root", str(fmnist.root), "--batch-size", "8",
                     "--accelerator", "cpu", "--set", "data.val_fraction=0.2", *flags, "--out", str(out))
    one_error_line(result, *needles, code=2)
    assert not out.exists()


def test_an_unlabelled_folder_without_images_is_refused(fmnist, tmp_path, fkt_cli):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images here")
    for root, needle in ((empty, "no images"), (tmp_path / "missing", "no such folder")):
        out = tmp_path / "out"
        result = fkt_cli("train", "--dataset", "fashion-mnist", "--data-root", str(fmnist.root),
                         "--unlabelled-root", str(root), "--out", str(out))
        one_error_line(result, f"--unlabelled-root {root}: {needle}", code=2)
        assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["fashion-mnist", "cifar10", "intel-image", "aptos2019", "imagefolder"])
def test_few_labels_and_an_unlabelled_folder_on_every_layout(make_dataset, tmp_path, fkt_cli, layout):
    from test_predict import LAYOUTS

    data = make_dataset(layout, **dict(LAYOUTS)[layout])
    extra = tmp_path / "unlabelled"
    extra.mkdir()
    for i in range(5):
        colour_image(i % 3, 3, (24, 20)).save(extra / f"{i}.jpg")
    for method in ("functional", "representational"):
        out = tmp_path / method
        result = fkt_cli("train", "--method", method, "--dataset", layout, "--data-root", str(data.root),
                         "--image-size", "16", "--batch-size", "8", "--labels-per-class", "2",
                         "--labelled-batch-size", "4", "--unlabelled-root", str(extra), "--epochs", "1",
                         "--pretrain-epochs", "1", "--accelerator", "cpu", "--num-workers", "0", "--no-progress",
                         "--set", "data.val_fraction=0.25", "--set", "model.proj_hidden_dim=32", "--out", str(out))
        assert result.returncode == 0, result.stderr[-3000:]
        saved = json.loads((out / "metrics.json").read_text())
        classes = dict(LAYOUTS)[layout].get("num_classes", len(saved["classes"]))  # the classes present
        assert saved["images"]["labelled"] == 2 * classes and saved["images"]["unlabelled"] >= 5
        assert saved["compute"]["passes_by_term"]["ssl"] > 0 and saved["compute"]["passes_by_term"]["ce"] > 0


def test_with_few_labels_every_arm_gets_the_functional_cells_image_passes(fmnist, tmp_path):
    from fkt.reproduce import cells

    preset = config(fmnist.root, labelled_batch_size=4).to_dict()
    preset["grid"] = {"methods": ["functional", "representational", "supervised-matched"], "seeds": [0],
                      "axes": {"data.labels_per_class": [3, None]}}
    plan = {(c.data.labels_per_class, c.arm): c.trainer for c in cells(build_config(preset), tmp_path)}
    # every arm's epoch is a pass over the pool: functional's step is 2 x 8 views + 4 labelled images
    assert (plan[3, "representational"].pretrain_epochs, plan[3, "representational"].epochs) == (2, 2)
    assert plan[3, "supervised-matched"].epochs == 2 * (2 * 8 + 4) // 4
    # every image labelled: the epochs of old, three times the functional arm's for supervised-matched
    assert plan[None, "supervised-matched"].epochs == 6 and plan[None, "representational"].epochs == 2


@pytest.mark.slow
def test_with_few_labels_the_matched_arms_make_exactly_the_functional_arms_passes(fmnist, tmp_path):
    from fkt.reproduce import run_grid

    preset = config(fmnist.root, labels_per_class=3, labelled_batch_size=4).to_dict()
    preset["trainer"]["epochs"] = 1
    preset["grid"] = {"methods": ["functional", "representational", "supervised-matched"], "seeds": [0]}
    preset["evaluate"] = {"probes": []}
    run_grid(build_config(preset), tmp_path)
    passes = {run.name.split("-")[-2]: json.loads((run / "metrics.json").read_text())["compute"]
              for run in (tmp_path / "runs").iterdir()}
    assert passes["functional"]["passes_by_term"] == {"ssl": 8 * 16, "ce": 8 * 4}  # 64 pool images / 8
    assert passes["representational"]["passes_by_term"] == {"ssl": 8 * 16, "ce": 8 * 4}
    assert passes["matched"]["passes_by_term"] == {"ce": 8 * 16 + 8 * 4}
