"""The grid: statistics with known answers, tables from hand-made metrics, matched compute, resume."""

from __future__ import annotations

import json
import math

import pytest
from conftest import folder_grid

from fkt.config import build_config

from fkt.reproduce import cell_config, cells, run_grid
from fkt.report.stats import paired_difference
from fkt.report.tables import results_table, significance_table, write_results


def test_paired_difference_known_answer():
    # differences 0.02, 0.01, 0.04: mean 0.02333, sd 0.015275, t(0.975, 2) = 4.302653
    test = paired_difference({0: 0.90, 1: 0.92, 2: 0.94}, {0: 0.88, 1: 0.91, 2: 0.90})
    assert test["n"] == 3 and test["mean_diff"] == pytest.approx(0.023333, abs=1e-6)
    half = 4.302653 * 0.0152753 / math.sqrt(3)
    assert test["ci_low"] == pytest.approx(0.023333 - half, abs=1e-5)
    assert test["ci_high"] == pytest.approx(0.023333 + half, abs=1e-5)
    assert test["p_value"] == pytest.approx(0.118083, abs=1e-5)
    assert not test["significant"]


def test_paired_difference_pairs_by_seed_and_needs_two_pairs():
    clear = paired_difference({0: 0.9, 1: 0.8, 2: 0.7, 3: 0.6}, {0: 0.85, 1: 0.74, 2: 0.66, 3: 0.55})
    assert clear["significant"] and clear["p_value"] < 0.05 and clear["ci_low"] > 0
    lonely = paired_difference({0: 0.9, 5: 0.1}, {0: 0.8, 7: 0.2})
    assert lonely["n"] == 1 and lonely["p_value"] is None and not lonely["significant"]


def run(dataset, arm, seed, acc, passes=1000, method=None):
    return {"dataset": dataset, "arm": arm, "method": method or arm, "seed": seed, "backbone": "resnet18",
            "val": {"accuracy": acc}, "test": {"accuracy": acc, "precision_macro": acc, "recall_macro": acc,
                                               "f1_macro": acc},
            "compute": {"epochs": 1, "image_passes": passes, "train_seconds": 10.0}}


def test_tables_from_hand_made_runs(tmp_path):
    runs = [run("fmnist", "functional", s, a) for s, a in enumerate([0.90, 0.92, 0.94])]
    runs += [run("fmnist", "representational", s, a) for s, a in enumerate([0.88, 0.91, 0.90])]
    table = results_table(runs)
    assert "| fmnist | functional | 3 | 92.00 ± 2.00 |" in table
    assert "| fmnist | representational | 3 | 89.67 ± 1.53 |" in table
    significance = significance_table(runs)
    assert "functional - representational | 3 | +2.33 |" in significance
    assert "not significant" in significance and "0.118" in significance

    markdown = write_results(tmp_path, runs)
    assert (tmp_path / "results.md").read_text() == markdown
    lines = (tmp_path / "results.csv").read_text().strip().splitlines()
    assert len(lines) == 7 and lines[0].startswith("dataset,arm,method,seed")


def test_representation_robustness_and_calibration_columns_with_paired_tests(tmp_path):
    runs = []
    for s, (knn_f, knn_r) in enumerate([(0.80, 0.70), (0.82, 0.71), (0.81, 0.73)]):
        for arm, knn in (("functional", knn_f), ("representational", knn_r)):
            r = run("fmnist", arm, s, 0.9)
            r["test"]["ece"] = 0.05 if arm == "functional" else 0.10 + 0.01 * s
            r["probes"] = {"knn": knn}
            per = {"gaussian_noise": knn - 0.1, "jpeg": knn}
            r["corruptions"] = {"mean_accuracy": sum(per.values()) / 2, "per_corruption": per}
            runs.append(r)
    table = results_table(runs)
    assert "| k-NN % | corrupted % | ECE % |" in table
    assert "| fmnist | functional | 3 | 90.00 ± 0.00 | 90.00 ± 0.00 | 90.00 ± 0.00 | 90.00 ± 0.00 | 81.00 ± 1.00 |" in table
    assert "functional - representational | 3 | +9.67 |" in significance_table(runs, "knn_accuracy")
    assert "functional - representational | 3 | -6.00 |" in significance_table(runs, "ece")
    assert "representational worse (p < 0.05)" in significance_table(runs, "ece")
    markdown = write_results(tmp_path, runs)
    assert "## Paired differences in k-NN accuracy of the frozen backbone" in markdown
    assert "## Accuracy under common corruptions" in markdown
    assert "| fmnist | functional | 3 | 90.00 ± 0.00 | 76.00 ± 1.00 | 71.00 ± 1.00 | 81.00 ± 1.00 |" in markdown
    assert "knn_accuracy" in (tmp_path / "results.csv").read_text().splitlines()[0]


def test_paper_figures_stand_beside_a_paper_preset():
    runs = [dict(run("cifar10", "functional", s, 0.9), backbone="resnet50") for s in range(2)]
    assert "93.60 ± 0.10" in results_table(runs)


def test_matched_supervised_arm_gets_the_functional_passes():
    for classifier_input, factor in (("clean", 3), ("view", 2)):
        config = build_config({"method": {"classifier_input": classifier_input}, "trainer": {"epochs": 4},
                               "grid": {"methods": ["functional", "supervised-matched"], "seeds": [0, 1]}})
        matched = cell_config(config, "fashion-mnist", "supervised-matched", 0, "out")
        assert matched.method.name == "supervised" and matched.arm == "supervised-matched"
        assert matched.trainer.epochs == 4 * factor
    assert [(c.arm, c.seed) for c in cells(config, "out")] == [
        ("functional", 0), ("functional", 1), ("supervised-matched", 0), ("supervised-matched", 1)]


def test_grid_skips_finished_cells_and_resumes_interrupted_ones(make_dataset, tmp_path, capsys):
    data = make_dataset("imagefolder", num_classes=3, train_per_class=8, test_per_class=2)
    preset = {
        "data": {"dataset": "imagefolder", "root": str(data.root), "image_size": 32, "batch_size": 8,
                 "val_fraction": 0.25, "num_workers": 0},
        "trainer": {"epochs": 2, "accelerator": "cpu", "progress_bar": False},
        "grid": {"methods": ["supervised"], "seeds": [0, 1]},
    }
    out = tmp_path / "grid"
    config = build_config(preset)
    first, second = cells(config, out)

    # seed 1 was interrupted after its first epoch (its last.ckpt holds one epoch, no metrics.json)
    from fkt.engine import train
    train(build_config({**preset, "trainer": {**preset["trainer"], "epochs": 1}, "seed": 1, "arm": "supervised",
                        "method": {"name": "supervised"}, "out": str(second.out)}))
    (second.out / "metrics.json").unlink()

    run_grid(config, out)
    resumed = json.loads((second.out / "metrics.json").read_text())
    fresh = json.loads((first.out / "metrics.json").read_text())
    assert resumed["compute"]["stages"]["train"]["resumed"] is True
    assert resumed["compute"]["image_passes"] == fresh["compute"]["image_passes"]  # two epochs in all
    assert fresh["compute"]["stages"]["train"]["resumed"] is False

    stamp = (first.out / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    markdown = run_grid(config, out)
    assert capsys.readouterr().out.count("done already, skipped") == 2
    assert (first.out / "metrics.json").stat().st_mtime_ns == stamp
    assert "| imagefolder | supervised | 2 |" in markdown


def test_a_different_runs_checkpoint_is_not_resumed(make_dataset, tmp_path):
    from fkt.engine import train
    from fkt.errors import UserError

    data = make_dataset("imagefolder", num_classes=3, train_per_class=8, test_per_class=2)
    base = {"data": {"dataset": "imagefolder", "root": str(data.root), "image_size": 32, "batch_size": 8,
                     "val_fraction": 0.25, "num_workers": 0},
            "trainer": {"epochs": 1, "accelerator": "cpu", "progress_bar": False}, "out": str(tmp_path / "run")}
    train(build_config({**base, "method": {"name": "functional"}}))
    (tmp_path / "run" / "metrics.json").unlink()
    with pytest.raises(UserError, match="last.ckpt: left by a different run"):
        train(build_config({**base, "method": {"name": "supervised"}}))


def test_grid_writes_learning_curves_and_confusion_matrices(make_dataset, tmp_path):
    data = make_dataset("imagefolder", num_classes=3, train_per_class=8, test_per_class=2)
    config = folder_grid(data.root, {"epochs": 2, "pretrain_epochs": 1},
                         {"methods": ["representational", "functional"], "seeds": [0]})
    run_grid(config, tmp_path)
    from PIL import Image

    from fkt.report.figures import validation_curve

    for name in ("imagefolder-learning-curves.png", "imagefolder-functional-confusion.png",
                 "imagefolder-representational-confusion.png", "imagefolder-gradcam.png",
                 "imagefolder-SSL-pretrained-tsne.png", "imagefolder-functional-tsne.png"):
        with Image.open(tmp_path / "figures" / name) as img:
            assert img.width > 200 and img.height > 150
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(list((tmp_path / "figures").glob("*.png"))) >= 7
    assert "<table>" in page and "functional" in page
    assert "figures/imagefolder-gradcam.png" in (tmp_path / "report.md").read_text()
    rep = validation_curve(tmp_path / "runs" / "imagefolder-representational-seed0", "finetune")
    func = validation_curve(tmp_path / "runs" / "imagefolder-functional-seed0", "train")
    assert len(rep) == len(func) == 2
    # representational's curve starts after its pretraining passes (two views of every image, one epoch)
    assert rep[0][0] == 2 * 16 + 16 and rep[1][0] == 2 * 16 + 2 * 16
    assert [p for p, _ in func] == [3 * 16, 6 * 16]
