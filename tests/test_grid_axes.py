"""Grid axes (`grid.axes`): the cell product and names, bad keys and values, matched compute per axis
value, tables and verdicts within axis values, the accuracy-against-axis figure, shared pretraining."""

from __future__ import annotations

import json
import re

import pytest

from conftest import folder_grid, one_error_line
from fkt.config import build_config
from fkt.errors import UserError
from fkt.reproduce import copy_sources, grid_plan, pretraining_sources, run_grid
from fkt.report.tables import results_table, significance_table, write_results

# supervised, not representational: with few labels a representational cell's epochs are matched to the
# functional cell's from the data's sizes (tests/test_few_labels.py), and these datasets are not here
GRID = {"methods": ["functional", "supervised"], "seeds": [0, 1]}


def test_cells_are_datasets_x_axis_values_x_arms_x_seeds_with_readable_names():
    config = build_config({"grid": {**GRID, "datasets": ["fashion-mnist", "cifar10"],
                                    "axes": {"data.labels_per_class": [10, None]}}})
    plan = grid_plan(config, "out")
    assert len(plan) == 2 * 2 * 2 * 2
    names = [cell.config.out.name for cell in plan]
    assert names[:5] == ["fashion-mnist-labels_per_class=10-functional-seed0",
                         "fashion-mnist-labels_per_class=10-functional-seed1",
                         "fashion-mnist-labels_per_class=10-supervised-seed0",
                         "fashion-mnist-labels_per_class=10-supervised-seed1",
                         "fashion-mnist-labels_per_class=all-functional-seed0"]
    assert names[8] == "cifar10-labels_per_class=10-functional-seed0"
    assert [cell.config.data.labels_per_class for cell in plan[:8]] == [10] * 4 + [None] * 4
    assert plan[4].axes == {"data.labels_per_class": None}
    # without axes: the names grids always had, so an existing grid still resumes
    plain = grid_plan(build_config({"grid": GRID}), "out")
    assert [c.config.out.name for c in plain][:2] == ["fashion-mnist-functional-seed0", "fashion-mnist-functional-seed1"]
    assert all(cell.axes == {} for cell in plain) and len(plain) == 4


def test_names_are_filesystem_safe_and_unambiguous():
    config = build_config({"grid": {"methods": ["functional"], "seeds": [0],
                                    "axes": {"optim.ssl.lr": [0.5], "optim.supervised.lr": [1e-05],
                                             "data.root": ["/data/my set"]}}})
    (cell,) = grid_plan(config, "out")
    assert cell.config.out.name == ("fashion-mnist-optim.ssl.lr=0.5-optim.supervised.lr=1e-05-root=_data_my_set"
                                    "-functional-seed0")
    assert cell.config.optim.supervised.lr == 1e-05 and str(cell.config.data.root) == "/data/my set"
    clash = build_config({"grid": {"methods": ["functional"], "seeds": [0], "axes": {"data.root": ["a/b", "a b"]}}})
    with pytest.raises(UserError, match="would share the run directory"):
        grid_plan(clash, "out")


def test_nested_axis_keys_from_set_are_the_dotted_field():
    config = build_config({"grid": {"axes": {"trainer": {"epochs": [1, 2]}}}})
    assert config.grid.axes == {"trainer.epochs": [1, 2]}


@pytest.mark.parametrize("axes, needle", [
    ({"data.labels_per_clas": [1]}, "grid.axes.data.labels_per_clas: not a config field"),
    ({"trainer.epochs.x": [1]}, "grid.axes.trainer.epochs.x: not a config field"),
    ({"seed": [1, 2]}, "grid.axes.seed: set by the grid itself (use grid.seeds)"),
    ({"trainer.epochs": []}, "grid.axes.trainer.epochs: needs at least one value"),
    ({"trainer.epochs": 5}, "grid.axes.trainer.epochs: Input should be a valid list"),
])
def test_a_bad_axis_key_is_refused_in_one_line_at_load(axes, needle):
    with pytest.raises(UserError) as err:
        build_config({"grid": {"axes": axes}})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_bad_axis_key_and_bad_axis_value_through_the_cli(fkt_cli, tmp_path):
    result = fkt_cli("reproduce", "--preset", "quick", "--set", "grid.axes.data.nope=[1]", "--out", str(tmp_path / "a"))
    one_error_line(result, "grid.axes.data.nope", "not a config field", code=2)
    result = fkt_cli("reproduce", "--preset", "quick", "--set", "grid.axes.data.labels_per_class=[100,0]",
                     "--out", str(tmp_path / "b"))
    one_error_line(result, "grid cell fashion-mnist/labels_per_class=0/supervised-matched/seed 0",
                   "data.labels_per_class", code=2)
    assert not (tmp_path / "b" / "runs").exists()  # every cell is checked before any trains


def test_supervised_matched_epochs_come_from_the_functional_cell_with_the_same_axis_values():
    config = build_config({"grid": {"methods": ["functional", "supervised-matched"], "seeds": [0],
                                    "axes": {"trainer.epochs": [1, 4], "method.classifier_input": ["clean", "view"]}}})
    plan = grid_plan(config, "out")
    matched = {(c.axes["trainer.epochs"], c.axes["method.classifier_input"]): c.config.trainer.epochs
               for c in plan if c.config.arm == "supervised-matched"}
    assert matched == {(1, "clean"): 3, (1, "view"): 2, (4, "clean"): 12, (4, "view"): 8}
    functional = {c.config.out.name: c.config.trainer.epochs for c in plan if c.config.arm == "functional"}
    assert functional["fashion-mnist-epochs=4-classifier_input=view-functional-seed0"] == 4
    assert all(c.config.method.name == "supervised" for c in plan if c.config.arm == "supervised-matched")


def test_only_representational_cells_that_cannot_differ_in_pretraining_share_it():
    config = build_config({"grid": {"methods": ["representational", "functional"], "seeds": [0, 1],
                                    "axes": {"optim.ssl.lr": [0.1, 0.2], "trainer.epochs": [1, 2]}}})
    sources = {here.name: there.name for here, there in pretraining_sources(grid_plan(config, "out")).items()}
    assert sources == {f"fashion-mnist-lr=0.{lr}-epochs=2-representational-seed{s}":
                       f"fashion-mnist-lr=0.{lr}-epochs=1-representational-seed{s}" for lr in (1, 2) for s in (0, 1)}


def run(arm, seed, acc, axes=None, labelled=None):
    result = {"dataset": "fmnist", "arm": arm, "method": arm, "seed": seed, "backbone": "resnet18",
              "val": {"accuracy": acc}, "test": {"accuracy": acc, "precision_macro": acc, "recall_macro": acc,
                                                 "f1_macro": acc},
              "compute": {"epochs": 1, "image_passes": 1000, "train_seconds": 10.0}}
    if axes is not None:
        result["axes"] = axes
    if labelled is not None:
        result["images"] = {"labelled": labelled, "unlabelled": 5000 - labelled}
    return result


def label_budget_runs():
    """At 10 labels per class functional is ahead by 5, 6 and 4 points; with all labels, by -2, +0.5 and
    -0.9 points (no difference shown): pooled across the two, the pairs would read differently."""
    runs = []
    for budget, gaps in ((10, (0.05, 0.06, 0.04)), (None, (-0.02, 0.005, -0.009))):
        for seed, (acc, gap) in enumerate(zip((0.80, 0.82, 0.81), gaps)):
            axes = {"data.labels_per_class": budget}
            runs.append(run("representational", seed, acc, axes))
            runs.append(run("functional", seed, acc + gap, axes))
    return runs


def test_tables_group_by_axis_values_and_pair_only_within_them(tmp_path):
    runs = label_budget_runs()
    table = results_table(runs)
    assert table.startswith("| dataset | data.labels_per_class | arm | n | accuracy % |")
    assert "| fmnist | 10 | representational | 3 | 81.00 ± 1.00 |" in table
    assert "| fmnist | 10 | functional | 3 | 86.00 ± 1.73 |" in table
    assert "| fmnist | all | functional | 3 | 80.20 ± 2.25 |" in table
    significance = significance_table(runs)
    assert ("| fmnist | 10 | functional - representational | 3 | +5.00 | [+2.52, +7.48] | 0.0131 "
            "| functional better (p < 0.05) |") in significance
    assert ("| fmnist | all | functional - representational | 3 | -0.80 | [-3.91, +2.31] | 0.384 "
            "| not significant: no difference shown |") in significance
    write_results(tmp_path, runs)
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines[0].startswith("dataset,data.labels_per_class,arm,method,seed,")
    assert lines[1].startswith("fmnist,10,representational,") and lines[7].startswith("fmnist,,representational,")


def test_accuracy_against_label_budget_uses_labelled_images_on_a_log_scale(tmp_path, monkeypatch):
    from fkt.report import figures

    drawn = {}
    original = figures.save
    monkeypatch.setattr(figures, "save", lambda fig, path: (drawn.update({path.name: fig.axes[0]}), original(fig, path)))
    runs = [run(arm, seed, acc + 0.01 * seed, {"data.labels_per_class": budget}, labelled)
            for budget, labelled, acc in ((10, 100, 0.5), (100, 1000, 0.7), (None, None, 0.9))
            for arm in ("functional", "representational") for seed in range(3)]
    written = figures.axis_figures(tmp_path, runs)
    assert [p.name for p in written] == ["fmnist-accuracy-vs-labels_per_class.png"]
    assert written[0].stat().st_size > 10_000
    ax = drawn["fmnist-accuracy-vs-labels_per_class.png"]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "labelled training images"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["100", "1,000", "all"]
    line = ax.get_lines()[0]  # functional: the mean over seeds, null (no image count) right of the largest
    assert list(line.get_xdata()) == [100, 1000, 2000]
    assert list(line.get_ydata()) == pytest.approx([51, 71, 91])
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["functional", "representational"]
    # a categorical axis gets no line plot
    assert figures.axis_figures(tmp_path, [run("functional", 0, 0.5, {"method.classifier_input": "view"})]) == []


def test_report_opens_with_verdicts_then_figures_in_reading_order(tmp_path):
    from fkt.report.page import write_report
    from fkt.report.verdicts import verdicts_markdown

    (tmp_path / "figures").mkdir()
    names = ["fmnist-SSL-pretrained-tsne", "fmnist-functional-confusion", "fmnist-gradcam",
             "fmnist-learning-curves", "fmnist-accuracy-vs-labels_per_class"]
    for name in names:
        (tmp_path / "figures" / f"{name}.png").write_bytes(b"\x89PNG fake")
    runs = label_budget_runs()
    write_report(tmp_path, write_results(tmp_path, runs), verdicts_markdown(runs))
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# fkt report\n\n## Verdicts")
    assert ("- fmnist, labels_per_class=10: functional beats representational by 5.00 points "
            "(95% CI [2.52, 7.48], 3 seeds, p = 0.0131)." in md)
    assert ("- fmnist, labels_per_class=all: functional against representational: no significant difference "
            "(-0.80 points, 95% CI [-3.91, +2.31], 3 seeds, p = 0.384)." in md)
    order = [md.index(f"figures/{name}.png") for name in reversed(names)]
    assert order == sorted(order) and order[-1] < md.index("## Test metrics")
    page = (tmp_path / "report.html").read_text()
    assert page.index("<h2>Verdicts") < page.index("<img") < page.index("<table>")
    assert "<li>fmnist, labels_per_class=10: functional beats representational" in page


def test_without_axes_the_verdicts_still_open_the_report_one_line_per_dataset():
    from fkt.report.verdicts import verdicts_markdown

    runs = [run("functional", s, 0.9 - 0.01 * s) for s in range(3)]
    runs += [run("representational", s, 0.9) for s in range(3)] + [run("supervised-matched", 0, 0.95)]
    lines = [line for line in verdicts_markdown(runs).splitlines() if line.startswith("- ")]
    assert lines == ["- fmnist: functional against representational: no significant difference (-1.00 points, "
                     "95% CI [-3.48, +1.48], 3 seeds, p = 0.225); functional against supervised-matched: -5.00 "
                     "points over 1 seed, too few seeds to test (two are needed)."]


@pytest.mark.slow
def test_cells_that_share_a_simclr_stage_pretrain_once_and_still_count_it(make_dataset, tmp_path):
    data = make_dataset("imagefolder", num_classes=3, train_per_class=8, test_per_class=2)
    config = folder_grid(data.root, {"epochs": 1, "pretrain_epochs": 1}, evaluate={"probes": []},
                         grid={"methods": ["representational"], "seeds": [0], "axes": {"trainer.epochs": [1, 2]}})
    markdown = run_grid(config, tmp_path)
    first, second = (tmp_path / "runs" / f"imagefolder-epochs={e}-representational-seed0" for e in (1, 2))
    ckpt = ("checkpoints", "pretrain", "last.ckpt")
    assert first.joinpath(*ckpt).read_bytes() == second.joinpath(*ckpt).read_bytes()
    assert (first / "logs" / "pretrain").is_dir() and not (second / "logs" / "pretrain").exists()  # trained once
    one, two = (json.loads((d / "metrics.json").read_text()) for d in (first, second))
    assert one["axes"] == {"trainer.epochs": 1} and two["axes"] == {"trainer.epochs": 2}
    pretrain = one["compute"]["stages"]["pretrain"]["image_passes"]
    assert pretrain == 2 * 16 and two["compute"]["stages"]["pretrain"]["image_passes"] == pretrain
    assert two["compute"]["image_passes"] == pretrain + 2 * 16 and one["compute"]["image_passes"] == pretrain + 16
    assert two["shared_pretraining"] == first.name and "shared_pretraining" not in one
    note = f"- imagefolder, trainer.epochs=2, representational, seed 0: the SSL stage of `{first.name}`"
    assert "SSL pretraining was shared" in markdown and note in markdown
    # (one epoch on 16 images: its SSL stage may be flagged as not learning, a mark beside the arm)
    assert re.search(r"\| imagefolder \| 2 \| representational( \u26a0)? \| 1 \|", markdown)
    assert note in run_grid(config, tmp_path)  # read back from finished cells, the same


def test_supervised_cells_that_cannot_differ_are_copies_of_the_first():
    config = build_config({"grid": {"methods": ["functional", "supervised-matched", "representational"],
                                    "seeds": [0], "axes": {"method.lambda_ce": [0.5, 1.0],
                                                           "method.temperature": [0.2, 0.5]}}})
    copies = copy_sources(grid_plan(config, "out"))
    first = "out/runs/fashion-mnist-lambda_ce=0.5-temperature=0.2-supervised-matched-seed0"
    assert {str(k): str(v) for k, v in copies.items()} == {
        f"out/runs/fashion-mnist-lambda_ce={lam}-temperature={t}-supervised-matched-seed0": first
        for lam, t in [(0.5, 0.5), (1.0, 0.2), (1.0, 0.5)]}
    # an axis supervised training reads is never copied across
    epochs = build_config({"grid": {"methods": ["supervised"], "seeds": [0], "axes": {"trainer.epochs": [1, 2]}}})
    assert copy_sources(grid_plan(epochs, "out")) == {}


@pytest.mark.slow
def test_a_copied_cell_keeps_its_own_axes_and_names_its_source(make_dataset, tmp_path):
    data = make_dataset("imagefolder", num_classes=3, train_per_class=8, test_per_class=2)
    config = folder_grid(data.root, {"epochs": 1}, evaluate={"probes": []},
                         grid={"methods": ["supervised"], "seeds": [0], "axes": {"method.lambda_ce": [0.5, 1.0]}})
    markdown = run_grid(config, tmp_path)
    first, second = (tmp_path / "runs" / f"imagefolder-lambda_ce={v}-supervised-seed0" for v in (0.5, 1.0))
    assert f"- imagefolder, method.lambda_ce=1.0, supervised, seed 0: a copy of `{first.name}`" in markdown
    best = ("checkpoints", "best.ckpt")
    assert first.joinpath(*best).read_bytes() == second.joinpath(*best).read_bytes()
    one, two = (json.loads((d / "metrics.json").read_text()) for d in (first, second))
    assert two["axes"] == {"method.lambda_ce": 1.0} and two["copy_of"] == first.name and "copy_of" not in one
    assert two["test"] == one["test"] and not list(tmp_path.glob("runs/*.copying"))
