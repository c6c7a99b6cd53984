"""A preset's grid of (dataset, arm, seed) cells, each its own run directory, then the tables.

A cell whose metrics.json exists is not run again, and a cell that was interrupted
resumes from its last checkpoint, so rerunning the same command finishes the grid.
"""

from __future__ import annotations

import json
from pathlib import Path

from fkt.config import Config, build_config, deep_merge
from fkt.engine import train
from fkt.io import RunLock, is_rank_zero
from fkt.report.figures import grid_figures
from fkt.report.embedding import embedding_plot
from fkt.report.gradcam import cam_from_checkpoints, column_name, load_columns
from fkt.report.page import write_report
from fkt.report.tables import arm_of, write_results


def passes_per_image(config: Config) -> int:
    """Backbone passes one functional epoch costs per image: two views, plus the classifier's own input
    (the image or its weak view; none where it reuses the first SSL view)."""
    return 2 if config.method.classifier_input == "view" else 3


def cell_config(config: Config, dataset: str, arm: str, seed: int, out: Path) -> Config:
    """The config of one cell: the preset, then its dataset's and its arm's overrides."""
    data = config.to_dict()
    data["data"]["dataset"] = dataset
    data = deep_merge(data, config.grid.per_dataset.get(dataset, {}))
    if arm == "supervised-matched":
        functional = cell_config(config, dataset, "functional", seed, out)
        data = deep_merge(data, config.grid.per_method.get(arm, {}))
        data["method"]["name"] = "supervised"
        data["trainer"]["epochs"] = functional.trainer.epochs * passes_per_image(functional)
    else:
        data["method"]["name"] = arm
        data = deep_merge(data, config.grid.per_method.get(arm, {}))
    data.update(seed=seed, arm=arm, out=str(Path(out) / "runs" / f"{dataset}-{arm}-seed{seed}"))
    return build_config(data, f"grid cell {dataset}/{arm}/seed {seed}")


def cells(config: Config, out: Path) -> list[Config]:
    datasets = config.grid.datasets or [config.data.dataset]
    return [cell_config(config, dataset, arm, seed, out)
            for dataset in datasets for arm in config.grid.methods for seed in config.grid.seeds]


def run_grid(config: Config, out: Path) -> str:
    """Run every cell not yet done, then write results.csv and results.md; returns the Markdown."""
    out = Path(out)
    if not is_rank_zero():  # other DDP ranks train the cells with rank 0; rank 0 alone reports
        for cell in cells(config, out):
            if not (Path(cell.out) / "metrics.json").exists():
                train(cell)
        return ""
    with RunLock(out, "reproduce --out"):
        return run_cells(config, out)


def run_cells(config: Config, out: Path) -> str:
    runs, run_dirs = [], []
    for cell in cells(config, out):
        run_dirs.append(Path(cell.out))
        metrics_file = Path(cell.out) / "metrics.json"
        if metrics_file.exists():
            print(f"[fkt] {cell.out}: done already, skipped", flush=True)
            runs.append(json.loads(metrics_file.read_text()))
            continue
        print(f"[fkt] training {cell.arm} on {cell.data.dataset}, seed {cell.seed} -> {cell.out}", flush=True)
        runs.append(train(cell))
    grid_figures(out, runs, run_dirs)
    for dataset in dict.fromkeys(run["dataset"] for run in runs):
        checkpoints = cam_checkpoints([(r, d) for r, d in zip(runs, run_dirs) if r["dataset"] == dataset])
        if checkpoints:
            loaded = load_columns(checkpoints, dataset, None)
            cam_from_checkpoints(checkpoints, dataset, None, 8, out / "figures" / f"{dataset}-gradcam.png", loaded)
            embeddings(*loaded, out / "figures", dataset)
    markdown = write_results(out, runs)
    write_report(out, markdown)
    return markdown


def cam_checkpoints(runs: list[tuple[dict, Path]]) -> list[Path]:
    """The paper's Grad-CAM columns at the lowest seed: SSL-pretrained, representational,
    functional, then the supervised arms."""
    seed = min(run["seed"] for run, _ in runs)
    by_arm = {arm_of(run): run_dir for run, run_dir in runs if run["seed"] == seed}
    columns = []
    if "representational" in by_arm:
        columns.append(by_arm["representational"] / "checkpoints" / "pretrain" / "last.ckpt")
    for arm in ("representational", "functional", "supervised", "supervised-matched"):
        if arm in by_arm:
            columns.append(by_arm[arm] / "checkpoints" / "best.ckpt")
    return [c for c in columns if c.exists()]


def embeddings(modules: list, data, folder: Path, dataset: str) -> None:
    """A t-SNE plot of each Grad-CAM column's backbone on the test set."""
    for module in modules:
        name = column_name(module)
        embedding_plot(module, data.sets["test"], data.classes, folder / f"{dataset}-{name}-tsne.png",
                       f"{dataset}: {name} backbone features (t-SNE, test set)")
