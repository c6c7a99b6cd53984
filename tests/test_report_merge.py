"""`fkt report DIR [DIR ...]`: one tiny grid trained once (2 arms x 2 seeds), its seed-1 runs copied into
a second folder; the two folders' report is the grid's own, and mixtures that would not pair are refused
in one line before anything is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from conftest import folder_grid, make_imagefolder, one_error_line
from fkt.reproduce import run_grid


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    """The grid's --out folder: functional and supervised, seeds 0 and 1, one epoch on 24 images."""
    data = make_imagefolder(tmp_path_factory.mktemp("data"), num_classes=3, train_per_class=8, test_per_class=2)
    out = tmp_path_factory.mktemp("grid")
    run_grid(folder_grid(data.root, {"epochs": 1}, evaluate={"probes": []},
                         grid={"methods": ["functional", "supervised"], "seeds": [0, 1]}), out)
    return out


def runs_of(grid: Path, seed: int, folder: Path) -> Path:
    """A folder holding copies of `grid`'s runs of one seed, as another grid's --out would."""
    for run in (grid / "runs").glob(f"*-seed{seed}"):
        shutil.copytree(run, folder / "runs" / run.name)
    return folder


def edit_config(run: Path, section: str, field: str, value) -> None:
    config = yaml.safe_load((run / "config.yaml").read_text())
    config[section][field] = value
    (run / "config.yaml").write_text(yaml.safe_dump(config))


def test_two_folders_of_seeds_give_the_grids_own_report(grid, tmp_path, fkt_cli):
    first, second = runs_of(grid, 0, tmp_path / "a"), runs_of(grid, 1, tmp_path / "b")
    for run in (second / "runs").iterdir():  # where it ran and how it logged: not what it trained
        edit_config(run, "data", "num_workers", 3)
        edit_config(run, "trainer", "log_every_n_steps", 1)
    unfinished = second / "runs" / "imagefolder-functional-seed2"
    unfinished.mkdir()
    shutil.copy(second / "runs" / "imagefolder-functional-seed1" / "config.yaml", unfinished)
    result = fkt_cli("report", str(first), str(second), "--out", str(first))  # --out may be an input
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [f"[fkt] skipped 1 unfinished run(s) (no metrics.json): {unfinished}"]
    # every cell's accuracies, seconds and compute, in the grid's order, and its paired verdicts
    assert (first / "results.csv").read_text() == (grid / "results.csv").read_text()
    markdown = (grid / "results.md").read_text()
    assert (first / "results.md").read_text() == markdown and markdown.strip() in result.stdout
    assert (first / "report.html").is_file()


def test_a_folder_without_finished_runs_is_refused(grid, tmp_path, fkt_cli):
    empty = tmp_path / "empty"
    unfinished = empty / "runs" / "imagefolder-functional-seed5"
    unfinished.mkdir(parents=True)
    shutil.copy(grid / "runs" / "imagefolder-functional-seed0" / "config.yaml", unfinished)
    result = fkt_cli("report", str(grid), str(empty), "--out", str(tmp_path / "report"))
    one_error_line(result, f"{empty}: no finished runs (no runs/*/metrics.json)", code=2)
    assert not (tmp_path / "report").exists()


def test_the_same_seed_in_two_folders_is_refused(grid, tmp_path, fkt_cli):
    again = runs_of(grid, 1, tmp_path / "again")
    result = fkt_cli("report", str(grid), str(again), "--out", str(tmp_path / "report"))
    name = "imagefolder-functional-seed1"
    one_error_line(result, "imagefolder, functional, seed 1", str(grid / "runs" / name),
                   str(again / "runs" / name), code=2)
    assert not (tmp_path / "report").exists()


def test_runs_meant_to_pair_that_trained_differently_are_refused(grid, tmp_path, fkt_cli):
    first, second = runs_of(grid, 0, tmp_path / "a"), runs_of(grid, 1, tmp_path / "b")
    edit_config(second / "runs" / "imagefolder-supervised-seed1", "optim",
                "supervised", {"name": "sgd", "lr": 0.5, "momentum": 0.9, "weight_decay": 0.0005})
    result = fkt_cli("report", str(first), str(second), "--out", str(tmp_path / "report"))
    one_error_line(result, "optim.supervised.lr differs", "0.025 in", "0.5 in",
                   str(first / "runs" / "imagefolder-supervised-seed0"),
                   str(second / "runs" / "imagefolder-supervised-seed1"), code=2)
    assert not (tmp_path / "report").exists() and not (first / "results.csv").exists()
