"""`fkt tune` and `grid.tune`: equal-budget tuning of the arms with Optuna (fkt.tune.study holds one study).

Every arm gets the same number of trials of the same budget per trial (its cell's epochs, compute-matched as
in the grid), is selected on validation accuracy alone, and never reads the test split (Oliver et al. 2018:
a comparison of semi-supervised methods is only fair when every arm is tuned alike).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

from fkt.config import Arm, Config, build_config, load_yaml
from fkt.errors import UserError

CHOSEN = "chosen.json"  # in a study's folder: what it chose, its trials and their compute


def shown(values: dict[str, Any]) -> str:
    """`lr=0.0012, temperature=0.2`: sampled values by their last name."""
    return ", ".join(f"{key.split('.')[-1]}={value:.4g}" if isinstance(value, float)
                     else f"{key.split('.')[-1]}={value}" for key, value in values.items())


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`fkt tune`'s own flags."""
    g = p.add_argument_group("tuning (an Optuna study on the validation split)")
    g.add_argument("--arm", required=True, metavar="ARM", help=f"the arm to tune: {', '.join(get_args(Arm))}")
    g.add_argument("--trials", type=int, metavar="N", help="trials in all, completed or pruned (default: tune.trials)")
    g.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="the study's folder: trials/<n>/ (one run each), chosen.json, figures/; rerun to continue")
    g.add_argument("--storage", metavar="URL|PATH",
                   help="where the study lives: a database URL (sqlite:///..., postgresql://...) or a journal file "
                        "path, safe on a shared file system for workers on several machines (default: DIR/study.db)")
    g.add_argument("--space", type=Path, metavar="FILE.yaml",
                   help="the search space, a YAML mapping of dotted field -> {log: [lo, hi]}, {float: [lo, hi]}, "
                        "{int: [lo, hi]} or a list of choices (default: tune.space of the preset)")


def tune_command(config: Config, args: argparse.Namespace, launcher: Any) -> int:
    """Every flag checked, then the study run (or continued) and its choice printed in one line."""
    from fkt.tune.study import run_study

    study = command_study(config, args)
    if getattr(args, "dry_run", False):
        print(f"study {study.name} in {study.storage}: {study.tune.trials} trials of {args.arm} over "
              f"{', '.join(study.tune.space)}, {launcher.workers} worker(s) ({launcher.name}); nothing run")
        return 0
    record = run_study(study, launcher)
    if record is None:
        print(f"submitted {launcher.workers} workers of the study in {study.folder} ({launcher.name}); when they "
              "have ended, rerun this command to write chosen.json")
        return 0
    print(summary_line(record))
    print(f"wrote {study.folder / 'chosen.json'}")
    return 0


def command_study(config: Config, args: argparse.Namespace):
    """The study `fkt tune` asks for, every flag and field checked (one line naming it); nothing written."""
    from fkt.reproduce import tuning_key
    from fkt.tune.study import Study

    if args.arm not in get_args(Arm):
        raise UserError(f"--arm {args.arm}: unknown; choose one of {', '.join(get_args(Arm))}")
    if args.trials is not None and args.trials < 1:
        raise UserError(f"--trials {args.trials}: must be at least 1")
    tune = tune_settings(config, args)
    config = config.model_copy(update={"tune": tune})
    out = Path(args.out)
    study = Study(folder=out, storage=storage_of(args.storage, out), name=tuning_key(config.data.dataset, {}, args.arm),
                  config=config, tune=tune, dataset=config.data.dataset, arm=args.arm, axes={}, chosen={},
                  where=f"--out {out}")
    study.check()
    return study


def tune_settings(config: Config, args: argparse.Namespace):
    """tune (or grid.tune) of the preset, with --trials and --space over it, validated as one config."""
    base = config.tune or config.grid.tune
    data = base.model_dump(mode="json") if base is not None else {}
    source = "config"
    if args.space is not None:
        data["space"], source = load_yaml(args.space), str(args.space)
    if args.trials is not None:
        data["trials"] = args.trials
    if "space" not in data:
        raise UserError("--space: no search space; give --space FILE.yaml or tune.space in the preset")
    if "trials" not in data:
        raise UserError("--trials: how many trials? give --trials N or tune.trials in the preset")
    return build_config({**config.to_dict(), "tune": data}, source).tune  # --space replaces the preset's


def storage_of(given: str | None, out: Path) -> str:
    """--storage as a URL or a journal file's path (its folder must exist); default: DIR/study.db (SQLite)."""
    if given is None:
        return f"sqlite:///{(out / 'study.db').resolve()}"
    path = Path(given.removeprefix("sqlite:///")) if given.startswith("sqlite:///") or "://" not in given else None
    if path is not None and not path.resolve().parent.is_dir():
        raise UserError(f"--storage {given}: the folder {path.parent} does not exist")
    return given if "://" in given else str(path.resolve())


def summary_line(record: dict[str, Any]) -> str:
    trials, compute = record["trials"], record["compute"]
    return (f"{record['arm']} on {record['dataset']}: chose {shown(record['params'])}, val accuracy "
            f"{100 * record['best_val_accuracy']:.2f}% (trial {record['best_trial']}); {trials['completed']} trials "
            f"completed, {trials['pruned']} pruned; tuning compute {compute['image_passes']:,} image passes, "
            f"{compute['train_seconds']:.0f} s")


def tune_grid(config: Config, out: Path, launcher: Any) -> dict[str, dict[str, Any]]:
    """grid.tune: a study per (dataset, axis values, tuned arm) under out/tuning/<tuning_key>/, each done once
    (its chosen.json), all checked before the first trains; returns the settings chosen, by tuning key."""
    from fkt.tune.study import run_study

    studies = grid_studies(config, Path(out))
    chosen: dict[str, dict[str, Any]] = {}
    for study in studies:  # functional first: the arms matched to it are tuned at its chosen settings
        done = study.folder / CHOSEN
        record = json.loads(done.read_text()) if done.exists() else None
        if record is None or (record["trials"]["requested"], record["space"]) != (study.tune.trials, study.tune.space):
            record = run_study(replace(study, chosen=dict(chosen)), launcher)
            if record is None:
                raise UserError(f"grid.tune: the study {study.name} was submitted ({launcher.name}, no waiting); "
                                "rerun this command when its workers have ended")
        else:
            print(f"[fkt] tuning {study.name}: done already, skipped", flush=True)
        chosen[study.name] = record["params"]
    return chosen


def tuning_plan(config: Config, out: Path) -> str:
    """--dry-run's line on grid.tune: the studies that run before the cells, and which are done."""
    studies = grid_studies(config, Path(out))
    done = [study.name for study in studies if (study.folder / CHOSEN).exists()]
    return (f"grid.tune first: {len(studies)} studies of {config.grid.tune.trials} trials "
            f"({', '.join(study.name for study in studies)}), {len(done)} done; the cells then train with "
            "the settings chosen")


def chosen_settings(out: Path) -> dict[str, dict[str, Any]]:
    """What a grid's finished studies chose, by tuning key (empty without grid.tune): for the DDP ranks
    and --dry-run, which read the choice rather than make it."""
    return {path.parent.name: json.loads(path.read_text())["params"]
            for path in sorted(Path(out).glob(f"tuning/*/{CHOSEN}"))}


def grid_studies(config: Config, out: Path) -> list:
    """The grid's studies, each checked (with the settings its arm will have; the matched arms' functional
    values are filled in as they are chosen). A journal file each: safe where workers share a file system."""
    from fkt.reproduce import axis_points, tuning_key
    from fkt.tune.study import Study

    tune = config.grid.tune
    arms = sorted(tune.arms or config.grid.methods, key=lambda arm: arm != "functional")
    studies = []
    for dataset in config.grid.datasets or [config.data.dataset]:
        for axes in axis_points(config):
            for arm in arms:
                key = tuning_key(dataset, axes, arm)
                folder = out / "tuning" / key
                study = Study(folder=folder, storage=str((folder / "study.journal").resolve()), name=key,
                              config=config, tune=tune, dataset=dataset, arm=arm, axes=axes, chosen={},
                              where=f"grid.tune ({folder})")
                study.check()
                studies.append(study)
    return studies
