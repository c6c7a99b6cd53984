"""One Optuna study: the trials of one arm (at one dataset and axis values), each a run folder of its own that
trains the arm's budget and is scored on validation accuracy alone, the test split never read.

A study lives in a storage (SQLite, a journal file, a database URL) that every worker of it opens, so
`launcher.workers` worker tasks share its trials, and rerunning continues it up to `tune.trials`.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytorch_lightning as pl

from fkt.config import Config, TuneConfig, build_config, set_dotted
from fkt.errors import UserError
from fkt.io import atomic_write, atomic_write_json
from fkt.tune import CHOSEN, shown

# What a run's config may change between two runs of one study: where and how it runs, never what it learns.
BOOKKEEPING = ("out", "grid", "tune", "evaluate", "trainer.progress_bar", "trainer.checkpoint_every_n_steps",
               "trainer.checkpoint_every_minutes", "data.num_workers", "data.cache_dir", "data.eval_batch_size")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)  # what counts towards tune.trials


class PruneOnValidation(pl.Callback):
    """Reports val/acc to the trial after each validation and stops a trial the pruner drops.

    optuna-integration's PyTorchLightningPruningCallback imports the `lightning` package, which fkt does not
    use (it uses `pytorch_lightning`), so it cannot join fkt's Trainer: this is the part of it fkt needs. It
    never prunes at a stage's last validation (that would throw a finished result away), and keeps the final
    stage's passes and seconds so far, the compute of a trial that is stopped."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.spent = {"image_passes": 0, "train_seconds": 0.0}

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get("val/acc")
        if trainer.sanity_checking or value is None:
            return
        self.spent = {"image_passes": int(module.image_passes), "train_seconds": module.elapsed()}
        self.trial.report(float(value), trainer.current_epoch)
        last = trainer.current_epoch + 1 >= trainer.max_epochs or 0 < trainer.max_steps <= trainer.global_step
        if not last and self.trial.should_prune():
            raise optuna.TrialPruned(f"val acc {float(value):.4f} after epoch {trainer.current_epoch + 1}")


@dataclass(frozen=True)
class Study:
    """What one study tunes and where it keeps it (picklable: worker tasks carry it to other processes)."""

    folder: Path  # trials/<n>/ (run folders), chosen.json, figures/
    storage: str  # a database URL, or the path of a journal file
    name: str  # the study's name in the storage: the tuning key
    config: Config  # the preset, before the cell's own settings
    tune: TuneConfig
    dataset: str
    arm: str
    axes: dict[str, Any]
    chosen: dict[str, dict[str, Any]]  # settings tuning chose for other arms (the functional cell's)
    where: str  # what an error names: --out DIR, or grid.tune's folder

    def trial_config(self, values: dict[str, Any], folder: Path) -> Config:
        """The grid cell's config (its arm, its compute matching) with the trial's values, in `folder`."""
        from fkt.reproduce import cell_config, tuning_key

        chosen = {**self.chosen, tuning_key(self.dataset, self.axes, self.arm): values}
        config = cell_config(self.config, self.dataset, self.arm, self.tune.seed, self.folder, self.axes, chosen)
        one = {"devices": 1} if config.trainer.devices == "auto" else {}  # several GPUs: several workers, one each
        return config.model_copy(update={"out": folder, "trainer": config.trainer.model_copy(update=one)})

    def check(self) -> None:
        """Every value the space can give fits its field, the cell builds, a trial fits on one device: one line,
        before anything is written."""
        from fkt.hardware import probe_trainer

        for key, spec in self.tune.space.items():
            for value in spec if isinstance(spec, list) else next(iter(spec.values())):
                data = self.config.to_dict()
                set_dotted(data, key, value)
                try:
                    build_config(data, "tune")
                except UserError as err:
                    problem = str(err).split(": ", 2)[-1]
                    raise UserError(f"tune.space.{key}: the value {value!r} does not fit the field: "
                                    f"{problem}") from None
        if probe_trainer(self.trial_config({}, self.folder / "trials" / "0")).world_size > 1:
            raise UserError("--devices: a tuning trial runs on one device; spread the trials over several workers "
                            "instead (--launcher local --jobs N: one GPU each)")

    def settings(self) -> dict[str, Any]:
        """What a study's trials depend on, kept in the study so that a rerun with other settings is refused."""
        base = self.trial_config({}, self.folder).to_dict()
        for dotted in BOOKKEEPING:
            *sections, leaf = dotted.split(".")
            node = base
            for section in sections:
                node = node.get(section, {})
            node.pop(leaf, None)
        return {"space": self.tune.space, "pruner": self.tune.pruner, "config": base}

    def open(self, worker: int = 0) -> optuna.Study:
        """The study, created where it is not yet. Each worker's sampler draws from its own seed, moved on by
        the trials already made, so that workers and reruns do not repeat each other's random draws."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = self.storage if "://" in self.storage else optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(self.storage))
        study = optuna.create_study(storage=storage, study_name=self.name, direction="maximize",
                                    load_if_exists=True)
        seed = self.tune.seed + 1_000_003 * worker + len(study.trials)
        study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, self.tune.trials // 3)))
        study.pruner = optuna.pruners.MedianPruner() if self.tune.pruner == "median" else optuna.pruners.NopPruner()
        return study

    def start(self) -> optuna.Study:
        """The study, its settings recorded when new and checked against this run's when continued."""
        study = self.open()
        mine, theirs = json.loads(json.dumps(self.settings(), default=str)), study.user_attrs.get("fkt")
        if theirs is None:
            study.set_user_attr("fkt", mine)
        elif theirs != mine:
            field = first_difference(theirs, mine)
            raise UserError(f"{self.where}: its study ({self.storage}) was started with another {field}; "
                            "continue it with the same settings, or use another folder")
        return study

    def left(self, study: optuna.Study) -> int:
        return self.tune.trials - len(study.get_trials(deepcopy=False, states=FINISHED))

    def optimize(self, worker: int = 0, quota: int | None = None) -> None:
        """This worker's `quota` of trials (its share of those left), or trials until the study holds
        tune.trials finished ones. The shares make the count exact: a worker that only checked the count
        after each trial would start one more while another finished the last (9 trials of 8 seen with 2
        workers), and every arm must get the same number of trials. The count still stops workers of
        other commands sharing the study."""
        study = self.open(worker)
        if self.left(study) > 0 and quota != 0:
            study.optimize(self.objective, n_trials=quota, gc_after_trial=True,
                           callbacks=[optuna.study.MaxTrialsCallback(self.tune.trials, states=FINISHED)])

    def objective(self, trial: optuna.Trial) -> float:
        """One trial: the arm's run with the sampled values, scored on its best validation accuracy."""
        from fkt.engine import train
        from fkt.objectives import NonFiniteLoss
        from fkt.rundir import RunDir

        values = {key: suggest(trial, key, spec) for key, spec in self.tune.space.items()}
        folder = self.folder / "trials" / str(trial.number)
        shutil.rmtree(folder, ignore_errors=True)  # left by a study of this folder that is gone: not this trial's
        config = self.trial_config(values, folder)
        trial.set_user_attr("run", folder.relative_to(self.folder).as_posix())
        pruning = PruneOnValidation(trial)
        try:
            train(config, test=False, callbacks=[pruning] if self.tune.pruner != "none" else [])
        except (optuna.TrialPruned, NonFiniteLoss) as stop:  # a diverging trial is dropped like a pruned one
            trial.set_user_attr("compute", stopped_compute(config, pruning.spent))
            print(f"[fkt] {self.name} trial {trial.number} ({shown(values)}): pruned, {stop}", flush=True)
            raise optuna.TrialPruned(str(stop)) from None
        metrics = json.loads(RunDir(folder).metrics.read_text())
        trial.set_user_attr("compute", {k: metrics["compute"][k] for k in ("image_passes", "train_seconds")})
        accuracy = metrics["val"]["accuracy"]
        print(f"[fkt] {self.name} trial {trial.number} ({shown(values)}): val acc {100 * accuracy:.2f}%", flush=True)
        return accuracy

    def summarise(self, study: optuna.Study) -> dict[str, Any]:
        """chosen.json (the best trial's values, its val accuracy, the trials, the tuning compute) and the figures."""
        states = [t.state for t in study.trials]
        count = {name.lower(): states.count(state) for name, state in optuna.trial.TrialState.__members__.items()}
        if not count["complete"]:
            raise UserError(f"{self.where}: no trial of {self.arm} completed ({count['pruned']} pruned, "
                            f"{count['fail']} failed): nothing to choose")
        spent = [t.user_attrs.get("compute", {}) for t in study.trials]
        record = {
            "key": self.name, "dataset": self.dataset, "arm": self.arm, "axes": self.axes,
            "params": study.best_trial.params, "best_val_accuracy": study.best_value,
            "best_trial": study.best_trial.number, "best_run": study.best_trial.user_attrs.get("run"),
            "trials": {"requested": self.tune.trials, "completed": count["complete"], "pruned": count["pruned"],
                       "failed": count["fail"], "unfinished": count["running"]},
            "compute": {"image_passes": sum(c.get("image_passes", 0) for c in spent),
                        "train_seconds": round(sum(c.get("train_seconds", 0.0) for c in spent), 2)},
            "space": self.tune.space, "sampler": "TPE", "pruner": self.tune.pruner, "seed": self.tune.seed,
            "storage": self.storage, "figures": figures(study, self.folder / "figures")}
        atomic_write_json(self.folder / CHOSEN, record)
        return record


@dataclass(frozen=True)
class Worker:
    """A launcher task: one of the study's workers (module-level, so that it pickles)."""

    name: str
    study: Study
    index: int
    quota: int | None = None  # its share of the trials left; None: until the study holds its trials

    def __call__(self) -> None:
        self.study.optimize(self.index, self.quota)


def run_study(study: Study, launcher: Any) -> dict[str, Any] | None:
    """The study's trials on `launcher.workers` workers, then its chosen.json; None where the launcher only
    submitted them (rerun when they have ended)."""
    study.folder.mkdir(parents=True, exist_ok=True)
    left = study.left(study.start())
    if left > 0:
        count = min(max(1, launcher.workers), left)
        workers = [Worker(f"tune-{study.name}-{i}", study, i, left // count + (i < left % count)) for i in range(count)]
        launcher.run([workers], study.folder / "launch")
        if not launcher.waits:
            return None
    return study.summarise(study.open())


def suggest(trial: optuna.Trial, key: str, spec: Any) -> Any:
    """The trial's value of one field of the space (config.space_problem says which shapes there are)."""
    if isinstance(spec, list):
        return trial.suggest_categorical(key, spec)
    (kind, (lo, hi)), = spec.items()
    if kind == "int":
        return trial.suggest_int(key, lo, hi)
    return trial.suggest_float(key, float(lo), float(hi), log=kind == "log")


def stopped_compute(config: Config, final: dict[str, Any]) -> dict[str, Any]:
    """A stopped trial's passes and seconds: the final stage's until its last validation, the earlier
    stages' (a representational SSL stage) from their last checkpoints."""
    from fkt.checkpointing import read_checkpoint
    from fkt.methods import stages
    from fkt.rundir import RunDir

    spent = dict(final)
    for stage in stages(config)[:-1]:
        last = RunDir(config.out).last(stage.name)
        if last.exists():
            state = read_checkpoint(last, lazy=True).get("fkt", {})
            spent["image_passes"] += int(state.get("image_passes", 0))
            spent["train_seconds"] += float(state.get("train_seconds", 0.0))
    return {"image_passes": spent["image_passes"], "train_seconds": round(spent["train_seconds"], 2)}


def figures(study: optuna.Study, folder: Path) -> list[str]:
    """Optuna's optimisation history and parameter importances (matplotlib), as PNGs; their names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    folder.mkdir(parents=True, exist_ok=True)
    wanted = {"history": plots.plot_optimization_history}
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) >= 2 and len({json.dumps(t.params, sort_keys=True, default=str) for t in complete}) >= 2:
        wanted["importances"] = plots.plot_param_importances  # needs trials that differ
    names = []
    for name, plot in wanted.items():
        with warnings.catch_warnings():  # experimental API; importances of a few trials that tie
            warnings.simplefilter("ignore")
            axes = plot(study)
        figure = axes.figure
        atomic_write(folder / f"{name}.png", lambda f: figure.savefig(f, format="png", dpi=100, bbox_inches="tight"),
                     mode="wb")
        plt.close(figure)
        names.append(f"figures/{name}.png")
    return names


def first_difference(theirs: Any, mine: Any, prefix: str = "") -> str:
    """The first dotted field where two settings differ, with both values."""
    if isinstance(theirs, dict) and isinstance(mine, dict):
        for key in dict.fromkeys([*theirs, *mine]):
            if theirs.get(key) != mine.get(key):
                return first_difference(theirs.get(key), mine.get(key), f"{prefix}{key}.")
    path = prefix.rstrip(".").removeprefix("config.")
    return f"{path} (then {theirs!r}, now {mine!r})"
