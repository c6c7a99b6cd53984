"""A realistic few-label protocol (Oliver et al. 2018): a validation set as small as the labelled one
(data.val_labels_per_class), a task of some of the classes (data.labelled_classes) and a pool with a
share of images of the other classes (data.pool_mismatch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import colour_image, make_fashion_mnist, one_error_line

from fkt.config import build_config
from fkt.data.module import FKTDataModule
from fkt.engine import train
from fkt.errors import UserError

# 5 classes present; with val_fraction 0.2 the training split holds 16, 16, 16, 12, 12 images of them
COUNTS = [20, 20, 20, 15, 15]
TASK = ["Pullover", "T-shirt/top", "Trouser"]  # source classes 2, 0, 1: not in the data's order
OTHERS = ["Dress", "Coat"]  # 24 training images between them


def config(root: Path, **data) -> object:
    return build_config({
        "data": {"dataset": "fashion-mnist", "root": str(root), "image_size": 16, "batch_size": 8,
                 "val_fraction": 0.2, "num_workers": 0, **data},
        "model": {"proj_hidden_dim": 32},
        "trainer": {"accelerator": "cpu", "progress_bar": False, "epochs": 1},
    })


def data_module(root: Path, split_file: Path | None = None, **data) -> FKTDataModule:
    """A data module of `config(root, **data)`, set up (split made or read, sets built)."""
    module = FKTDataModule(config(root, **data), split_file=split_file)
    module.setup()
    return module


def indices(split_file: Path) -> dict[str, list[int]]:
    return json.loads(split_file.read_text())["indices"]


def indices_of(generated, split_file: Path, **data) -> dict[str, list[int]]:
    data_module(generated.root, split_file, **data)
    return indices(split_file)


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return make_fashion_mnist(tmp_path_factory.mktemp("fm"), num_classes=5, train_per_class=COUNTS,
                              test_per_class=5, gz=False)


def source_names(generated, positions: list[int]) -> list[str]:
    """The class names of training images, from the labels the generated files hold."""
    return [generated.classes[generated.train_labels[i]] for i in positions]


# --------------------------------------------------------------------------- the small validation set

def test_the_small_validation_set_is_k_a_class_seeded_and_disjoint_from_training(fmnist, tmp_path):
    full = indices_of(fmnist, tmp_path / "full.json", labels_per_class=3)
    small = indices_of(fmnist, tmp_path / "small.json", labels_per_class=3, val_labels_per_class=2)
    assert sorted(source_names(fmnist, small["val"])) == sorted(fmnist.classes[:5] * 2)
    assert set(small["val"]) < set(full["val"])  # a subset of the held-out split
    assert not set(small["val"]) & (set(small["train"]) | set(small["labelled"]))  # the pool is the train split
    again = indices_of(fmnist, tmp_path / "again.json", labels_per_class=3, val_labels_per_class=2)
    assert again["val"] == small["val"]
    other = indices_of(fmnist, tmp_path / "seed1.json", labels_per_class=3, val_labels_per_class=2, split_seed=1)
    assert other["val"] != small["val"] and len(other["val"]) == 10
    data = data_module(fmnist.root, tmp_path / "small.json", labels_per_class=3, val_labels_per_class=2)
    assert np.bincount(data.sets["val"].images.targets).tolist() == [2] * 5


def test_the_split_file_records_the_validation_size(fmnist, tmp_path):
    split = tmp_path / "split.json"
    data_module(fmnist.root, split, val_labels_per_class=2)
    assert json.loads(split.read_text())["val_labels_per_class"] == 2
    with pytest.raises(UserError, match="made with val_labels_per_class=2 but this run has 3"):
        data_module(fmnist.root, split, val_labels_per_class=3)
    saved = json.loads(split.read_text())
    del saved["val_labels_per_class"]  # a file from before the setting: made with the whole held-out split
    split.write_text(json.dumps(saved))
    with pytest.raises(UserError, match="made with val_labels_per_class=None but this run has 2"):
        data_module(fmnist.root, split, val_labels_per_class=2)


def test_too_few_held_out_images_for_the_small_validation_set_is_one_line(fmnist):
    with pytest.raises(UserError, match=r"^data\.val_labels_per_class=4: class 'Dress' has only 3 held-out validation "
                                        r"images \(data\.val_fraction=0\.2\); raise data\.val_fraction$"):
        data_module(fmnist.root, val_labels_per_class=4)


# --------------------------------------------------------------------------- the task's classes

def test_labelled_classes_are_the_task_in_their_order_with_remapped_targets(fmnist, tmp_path):
    split = tmp_path / "split.json"
    data = data_module(fmnist.root, split, labels_per_class=3, labelled_classes=TASK)
    assert data.classes == TASK and data.bundle.classes == TASK
    saved = indices(split)
    for name, part in (("labelled", "train"), ("val", "val")):
        expected = [TASK.index(n) for n in source_names(fmnist, saved[name])]
        assert data.sets[part].images.targets.tolist() == expected
    assert np.bincount(data.sets["train"].images.targets).tolist() == [3, 3, 3]
    test = [TASK.index(fmnist.classes[label]) for label in fmnist.test_labels if fmnist.classes[label] in TASK]
    assert data.sets["test"].images.targets.tolist() == test and len(test) == 15
    assert set(source_names(fmnist, saved["train"])) == set(TASK) and len(saved["train"]) == 48
    assert set(source_names(fmnist, saved["outside"])) == set(OTHERS)
    assert json.loads(split.read_text())["labelled_classes"] == TASK


@pytest.mark.parametrize("names, message", [
    (["Trouser", "Sweater"], "data.labelled_classes: no class 'Sweater' in this data; its classes are T-shirt/top, "
                             "Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot"),
    (["Trouser"], "data.labelled_classes=['Trouser']: needs at least 2 classes, each named once"),
    (["Trouser", "Trouser"], "data.labelled_classes=['Trouser', 'Trouser']: needs at least 2 classes, each named once"),
])
def test_bad_labelled_classes_are_one_line(fmnist, names, message):
    with pytest.raises(UserError) as err:
        data_module(fmnist.root, labelled_classes=names)
    assert str(err.value) == message


# --------------------------------------------------------------------------- the mismatched pool

def test_the_mismatched_pool_keeps_its_size_and_draws_round_m_n_from_the_other_classes(fmnist, tmp_path):
    split = tmp_path / "split.json"
    data = data_module(fmnist.root, split, labels_per_class=3, labelled_classes=TASK, pool_mismatch=0.5)
    saved = indices(split)
    n = len(saved["train"])  # the task's training images: the pool's size at any mismatch
    assert n == 48 and len(saved["pool"]) == n == sum(map(len, data.pool))
    assert data.counts == {"labelled": 9, "unlabelled": n - 9}
    truth = data.pool[0].images.truth
    assert (truth == -2).sum() == round(0.5 * n) == 24 and (data.pool[0].images.targets == -1).all()
    names = source_names(fmnist, saved["pool"])
    assert sum(name in OTHERS for name in names) == 24 and names.count("Dress") == names.count("Coat") == 12
    assert set(saved["labelled"]) <= set(saved["pool"]) and not set(saved["pool"]) & set(saved["val"])
    assert [TASK.index(name) if name in TASK else -2 for name in names] == truth.tolist()
    assert data.pool_summary == {"mismatch": 0.5, "classes": {"Pullover": 8, "T-shirt/top": 8, "Trouser": 8,
                                                              "other:Dress": 12, "other:Coat": 12}}
    assert json.loads(split.read_text())["pool_mismatch"] == 0.5


def test_without_mismatch_the_pool_is_the_task_classes_training_images(fmnist, tmp_path):
    split = tmp_path / "split.json"
    data = data_module(fmnist.root, split, labels_per_class=3, labelled_classes=TASK)
    saved = indices(split)
    assert saved["pool"] == saved["train"] and (data.pool[0].images.truth >= 0).all()
    assert data.pool_summary == {"mismatch": 0.0, "classes": {"Pullover": 16, "T-shirt/top": 16, "Trouser": 16}}


def test_the_pool_is_saved_and_reused_from_the_split_file(fmnist, tmp_path):
    split = tmp_path / "split.json"
    first = data_module(fmnist.root, split, labels_per_class=3, labelled_classes=TASK, pool_mismatch=0.25)
    again = data_module(fmnist.root, split, labels_per_class=3, labelled_classes=TASK, pool_mismatch=0.25)
    assert np.array_equal(first.pool[0].images.truth, again.pool[0].images.truth)
    saved = json.loads(split.read_text())
    saved["indices"]["pool"] = saved["indices"]["train"]  # not what this mismatch would draw: read, not redrawn
    split.write_text(json.dumps(saved))
    assert (data_module(fmnist.root, split, labels_per_class=3, labelled_classes=TASK, pool_mismatch=0.25)
            .pool[0].images.truth >= 0).all()
    with pytest.raises(UserError, match="made with pool_mismatch=0.25 but this run has 0.5"):
        data_module(fmnist.root, split, labels_per_class=3, labelled_classes=TASK, pool_mismatch=0.5)


def test_the_pool_summary_counts_unlabelled_root_images_as_unknown(fmnist, tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    for i in range(5):
        colour_image(i % 3, 3, (20, 18)).save(extra / f"u{i}.png")
    data = data_module(fmnist.root, labels_per_class=3, labelled_classes=TASK, pool_mismatch=0.25,
                 unlabelled_root=str(extra))
    assert data.pool_summary["classes"] == {"Pullover": 12, "T-shirt/top": 12, "Trouser": 12, "other:Dress": 6,
                                            "other:Coat": 6, "unknown": 5}
    assert data.counts == {"labelled": 9, "unlabelled": 48 + 5 - 9}


@pytest.mark.parametrize("data, message", [
    ({"labels_per_class": 3, "pool_mismatch": 0.75},
     "data.pool_mismatch=0.75: wants 36 of the pool's 48 images from the classes outside data.labelled_classes, "
     "which have only 24 training images"),
    ({"labels_per_class": 10, "pool_mismatch": 0.5},
     "data.pool_mismatch=0.5: leaves 24 places in the pool of 48 for the task's classes, fewer than the 30 "
     "labelled images"),
    ({"pool_mismatch": 0.5}, "data.pool_mismatch=0.5: every training image is labelled, so there is no pool; set "
                             "data.labels_per_class, data.labelled_fraction below 1 or data.unlabelled_root"),
])
def test_a_mismatch_the_data_cannot_supply_is_one_line(fmnist, data, message):
    with pytest.raises(UserError) as err:
        data_module(fmnist.root, labelled_classes=TASK, **data)
    assert str(err.value) == message


@pytest.mark.no_training  # each is refused in setup, before training
@pytest.mark.parametrize("sets, needle", [
    (["data.val_labels_per_class=4"], "data.val_labels_per_class=4: class 'Dress' has only 3"),
    (["data.labelled_classes=[Trouser, Sweater]"], "data.labelled_classes: no class 'Sweater'"),
    (["data.labelled_classes=[T-shirt/top, Trouser, Pullover, Dress]", "data.pool_mismatch=0.5"],
     "data.pool_mismatch=0.5: wants 30 of the pool's 60 images"),
])
def test_protocol_errors_stop_fkt_train_in_one_line_before_anything_is_written(fmnist, tmp_path, fkt_cli, sets,
                                                                                needle):
    out = tmp_path / "out"
    flags = [flag for item in sets for flag in ("--set", item)]
    result = fkt_cli("train", "--dataset", "fashion-mnist", "--data-root", str(fmnist.root), "--batch-size", "8",
                     "--accelerator", "cpu", "--labels-per-class", "2", "--set", "data.val_fraction=0.2", *flags,
                     "--out", str(out))
    one_error_line(result, needle, code=2)
    assert not out.exists()


# --------------------------------------------------------------------------- results tables

def table_run(mismatch: float | None = None, **extra) -> dict:
    from fkt.report.tables import METRICS

    run = {"dataset": "fashion-mnist", "method": "functional", "seed": 0, "backbone": "resnet-tiny",
           "val": {"accuracy": 0.5}, "test": dict.fromkeys(METRICS, 0.5),
           "compute": {"epochs": 1, "image_passes": 10, "train_seconds": 1.0}, **extra}
    return run if mismatch is None else {**run, "pool": {"mismatch": mismatch, "classes": {}}}


def test_tables_show_a_pool_mismatch_only_where_there_is_one():
    from fkt.report.tables import flat_row, results_table

    assert results_table([table_run(0.0)]) == results_table([table_run()])  # no mismatch: as before
    assert "pool_mismatch" not in flat_row(table_run(0.0)) and flat_row(table_run(0.5))["pool_mismatch"] == 0.5
    head, _, row = results_table([table_run(0.5)]).splitlines()
    assert head.startswith("| dataset | pool mismatch | arm |")
    assert row.startswith("| fashion-mnist | 0.5 | functional |")
    axis = results_table([table_run(0.5, axes={"data.pool_mismatch": 0.5})])  # the axis column shows it already
    assert axis.startswith("| dataset | data.pool_mismatch | arm |")


# --------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_a_run_with_a_mismatched_pool_reports_it_in_metrics_json(tmp_path):
    generated = make_fashion_mnist(tmp_path / "data", num_classes=4, train_per_class=[20, 20, 20, 30],
                                   test_per_class=5, gz=False)
    cfg = config(generated.root, labels_per_class=3, labelled_classes=["Trouser", "Pullover", "T-shirt/top"],
                 pool_mismatch=0.5).model_copy(update={"out": tmp_path / "run"})
    results = train(cfg)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["pool"] == results["pool"] == {
        "mismatch": 0.5, "classes": {"Trouser": 8, "Pullover": 8, "T-shirt/top": 8, "other:Dress": 24}}
    assert saved["classes"] == ["Trouser", "Pullover", "T-shirt/top"]
    assert saved["images"] == {"labelled": 9, "unlabelled": 48 - 9}
