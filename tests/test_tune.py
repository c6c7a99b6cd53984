"""Equal-budget tuning (fkt.tune): a study on a Fashion-MNIST slice records its choice, continues where it
stopped and never reads the test split; grid.tune trains the cells at each arm's choice and reports it; bad
input is refused in one line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import make_fashion_mnist, one_error_line

from fkt.data.module import FKTDataModule

SPACE = "optim.supervised.lr: {log: [0.0001, 0.01]}\noptim.supervised.name: [adamw, sgd]\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_fashion_mnist(tmp_path_factory.mktemp("tune") / "fm", num_classes=3, train_per_class=10,
                              test_per_class=2)


def flags(root: Path) -> list[str]:
    return ["--dataset", "fashion-mnist", "--data-root", str(root), "--image-size", "16", "--batch-size", "8",
            "--epochs", "1", "--accelerator", "cpu", "--no-progress", "--set", "evaluate.probes=[]",
            "--set", "data.val_fraction=0.2", "--set", "data.num_workers=0"]


@pytest.fixture
def test_split_forbidden_in(monkeypatch):
    """`forbid(folder_name)`: a run under a folder of that name that reads the test split fails at once."""
    real = FKTDataModule.loader

    def forbid(name: str) -> None:
        def loader(self, split, *args, **kwargs):
            if split == "test" and name in Path(self.config.out).parts:
                raise AssertionError(f"a tuning trial read the test split: {self.config.out}")
            return real(self, split, *args, **kwargs)

        monkeypatch.setattr(FKTDataModule, "loader", loader)

    return forbid


@pytest.mark.slow
def test_a_study_chooses_on_validation_continues_and_never_reads_test(data, tmp_path, fkt_cli,
                                                                     test_split_forbidden_in):
    test_split_forbidden_in("trials")
    (tmp_path / "space.yaml").write_text(SPACE)
    out = tmp_path / "study"
    args = ["tune", *flags(data.root), "--arm", "supervised", "--space", str(tmp_path / "space.yaml"),
            "--out", str(out)]

    first = fkt_cli(*args, "--trials", "2")  # stopped after 2 trials; then continued to 3
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0", "1"]
    done = fkt_cli(*args, "--trials", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    chosen = json.loads((out / "chosen.json").read_text())
    assert chosen["trials"] == {"requested": 3, "completed": 3, "pruned": 0, "failed": 0, "unfinished": 0}
    assert "chose lr=" in done.stdout and "3 trials completed" in done.stdout

    trials = {p.name: json.loads((p / "metrics.json").read_text()) for p in (out / "trials").iterdir()}
    assert sorted(trials) == ["0", "1", "2"] and all("test" not in m and "val" in m for m in trials.values())
    best = trials[str(chosen["best_trial"])]
    assert chosen["best_val_accuracy"] == best["val"]["accuracy"] == max(m["val"]["accuracy"] for m in trials.values())
    saved = yaml.safe_load((out / chosen["best_run"] / "config.yaml").read_text())
    assert chosen["params"] == {"optim.supervised.lr": saved["optim"]["supervised"]["lr"],
                                "optim.supervised.name": saved["optim"]["supervised"]["name"]}
    assert chosen["compute"]["image_passes"] == sum(m["compute"]["image_passes"] for m in trials.values()) > 0
    assert (out / "figures" / "history.png").stat().st_size > 1000

    again = fkt_cli(*args, "--trials", "3")  # done: nothing more trains
    assert again.returncode == 0 and "trial" not in again.stdout.split("chose")[0]
    assert len(list((out / "trials").iterdir())) == 3
    assert json.loads((out / "chosen.json").read_text())["params"] == chosen["params"]
    one_error_line(fkt_cli(*args, "--trials", "3", "--epochs", "2"), f"--out {out}", "trainer.epochs", code=2)


@pytest.mark.parametrize("extra, space, needles", [
    (["--arm", "nope"], SPACE, ["--arm nope", "unknown"]),
    (["--trials", "0"], SPACE, ["--trials 0"]),
    ([], "optim.supervised.lrr: {log: [0.001, 0.01]}\n", ["tune.space.optim.supervised.lrr", "not a config field"]),
    ([], "optim.supervised.lr: {log: [0.01, 0.001]}\n", ["tune.space.optim.supervised.lr", "empty"]),
    ([], "method.temperature: []\n", ["tune.space.method.temperature", "at least one"]),
    ([], "trainer.epochs: [1, 2]\n", ["tune.space.trainer.epochs", "budget"]),
    ([], "method.temperature: [0.0, 0.5]\n", ["tune.space.method.temperature", "0.0"]),
    (["--storage", "/no/such/folder/study.journal"], SPACE, ["--storage", "does not exist"]),
], ids=["arm", "trials", "unknown-field", "empty-range", "no-choices", "budget-field", "bad-value", "storage"])
@pytest.mark.no_training
def test_bad_tuning_input_is_one_line_and_writes_nothing(tmp_path, fkt_cli, extra, space, needles):
    (tmp_path / "space.yaml").write_text(space)
    args = ["tune", *flags(tmp_path / "fm"), "--arm", "functional", "--trials", "2",
            "--space", str(tmp_path / "space.yaml"), "--out", str(tmp_path / "study"), *extra]
    one_error_line(fkt_cli(*args), *needles, code=2)
    assert not (tmp_path / "study").exists()


def test_grid_tune_is_checked_against_the_grid():
    from fkt.config import build_config
    from fkt.errors import UserError

    space = {"optim.supervised.lr": {"log": [1e-3, 1e-2]}}
    for grid, needle in (({"methods": ["functional"], "tune": {"trials": 2, "space": space, "arms": ["supervised"]}},
                          "grid.tune.arms: supervised is not an arm"),
                         ({"axes": {"optim.supervised.lr": [0.1]}, "tune": {"trials": 2, "space": space}},
                          "grid.tune.space.optim.supervised.lr: also a grid axis")):
        with pytest.raises(UserError, match=needle):
            build_config({"grid": grid})


@pytest.mark.slow
def test_grid_tune_trains_every_arm_at_its_choice_and_reports_it(data, tmp_path, capsys, test_split_forbidden_in):
    from fkt.config import build_config
    from fkt.launch import Sequential
    from fkt.reproduce import run_grid
    from fkt.tune import tune_grid

    test_split_forbidden_in("tuning")
    config = build_config({
        "data": {"dataset": "fashion-mnist", "root": str(data.root), "image_size": 16, "batch_size": 8,
                 "val_fraction": 0.2, "num_workers": 0},
        "evaluate": {"probes": []}, "trainer": {"epochs": 1, "accelerator": "cpu", "progress_bar": False},
        "grid": {"methods": ["functional", "supervised-matched"], "seeds": [0], "tune": {
            "trials": 2, "space": {"optim.supervised.lr": {"log": [1e-3, 1e-2]}, "method.lambda_ce": [0.5, 2.0]}}}})
    markdown = run_grid(config, tmp_path)

    chosen = {key: json.loads((tmp_path / "tuning" / key / "chosen.json").read_text())
              for key in ("fashion-mnist-functional", "fashion-mnist-supervised-matched")}
    for arm in ("functional", "supervised-matched"):
        record = chosen[f"fashion-mnist-{arm}"]
        assert record["trials"]["completed"] == 2
        cell = yaml.safe_load((tmp_path / "runs" / f"fashion-mnist-{arm}-seed0" / "config.yaml").read_text())
        assert cell["optim"]["supervised"]["lr"] == record["params"]["optim.supervised.lr"]
        assert cell["method"]["lambda_ce"] == record["params"]["method.lambda_ce"]
        assert f"| {arm} | fashion-mnist | lr=" in markdown
    matched = yaml.safe_load((tmp_path / "runs" / "fashion-mnist-supervised-matched-seed0" / "config.yaml").read_text())
    assert matched["trainer"]["epochs"] == 3  # still the functional cell's passes (clean input: 3 a step)
    assert "## Tuning" in (tmp_path / "results.md").read_text()
    page = (tmp_path / "report.html").read_text()
    assert page.count("tuning-fashion-mnist-") >= 2
    assert (tmp_path / "figures" / "tuning-fashion-mnist-functional-history.png").stat().st_size > 1000

    capsys.readouterr()
    again = tune_grid(config, tmp_path, Sequential())
    assert capsys.readouterr().out.count("done already, skipped") == 2
    assert again == {key: record["params"] for key, record in chosen.items()}


@pytest.mark.no_training
def test_workers_share_the_trials_left_exactly(data, tmp_path):
    """Each worker of a study gets its share of the trials left: a count checked only after each trial
    would let a second worker start a trial too many, and every arm must get the same number."""
    import argparse

    from fkt.cli import build_parser, config_from_args
    from fkt.tune import command_study
    from fkt.tune.study import run_study

    (tmp_path / "space.yaml").write_text(SPACE)
    args = build_parser().parse_args(["tune", *flags(data.root), "--arm", "supervised", "--trials", "7",
                                      "--space", str(tmp_path / "space.yaml"), "--out", str(tmp_path / "study")])

    class Recording:
        name, waits = "recording", True

        def __init__(self, workers: int) -> None:
            self.workers, self.quotas = workers, []

        def run(self, waves, folder) -> None:
            self.quotas = [task.quota for task in waves[0]]
            raise KeyboardInterrupt  # record the shares, train nothing

    for workers, shares in ((2, [4, 3]), (3, [3, 2, 2]), (9, [1] * 7)):
        launcher = Recording(workers)
        with pytest.raises(KeyboardInterrupt):
            run_study(command_study(config_from_args(args), argparse.Namespace(**vars(args))), launcher)
        assert launcher.quotas == shares
