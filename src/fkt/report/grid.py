"""A grid's report from its runs, wherever they were trained: the tables (results.csv, results.md), the
paired verdicts, the figures, Grad-CAM and t-SNE of the first axis values, report.html. Written by
`fkt reproduce` once its cells are done, and by `fkt report` from the run folders of one or more grids.
"""

from __future__ import annotations

from pathlib import Path

from fkt.report.axes import axes_of, frozen
from fkt.report.embedding import embedding_plot
from fkt.report.figures import grid_figures
from fkt.report.gradcam import cam_from_checkpoints, column_name, load_columns
from fkt.report.page import write_report
from fkt.report.tables import arm_of, write_results
from fkt.report.verdicts import verdicts_markdown
from fkt.report.tuning import tuning_markdown
from fkt.rundir import PRETRAIN, RunDir


def write_grid_report(out: Path, runs: list[dict], run_dirs: list[Path]) -> str:
    """Every file of the report under `out`; returns results.md's Markdown."""
    grid_figures(out, runs, run_dirs)
    cams_and_embeddings(out, runs, run_dirs)
    # grid.tune's section, in results.md too; its figures go into figures/ before the page lists them
    tuning = tuning_markdown(out, {Path(run_dir).parent.parent for run_dir in run_dirs})
    markdown = write_results(out, runs, tuning)
    write_report(out, markdown, verdicts_markdown(runs))
    return markdown


def cams_and_embeddings(out: Path, runs: list[dict], run_dirs: list[Path]) -> None:
    """Per dataset, at its first axis values: the Grad-CAM grid and a t-SNE of each of its backbones."""
    for dataset in dict.fromkeys(run["dataset"] for run in runs):
        mine = [(r, d) for r, d in zip(runs, run_dirs) if r["dataset"] == dataset]
        point = frozen(axes_of(mine[0][0]))
        checkpoints = cam_checkpoints([(r, d) for r, d in mine if frozen(axes_of(r)) == point])
        if checkpoints:
            loaded = load_columns(checkpoints, dataset, None)
            cam_from_checkpoints(checkpoints, dataset, None, 8, out / "figures" / f"{dataset}-gradcam.png", loaded)
            embeddings(*loaded, out / "figures", dataset)


def cam_checkpoints(runs: list[tuple[dict, Path]]) -> list[Path]:
    """The paper's Grad-CAM columns at the lowest seed: SSL-pretrained, representational,
    functional, then the supervised arms."""
    seed = min(run["seed"] for run, _ in runs)
    by_arm = {arm_of(run): run_dir for run, run_dir in runs if run["seed"] == seed}
    columns = []
    if "representational" in by_arm:
        columns.append(RunDir(by_arm["representational"]).last(PRETRAIN))
    for arm in ("representational", "functional", "supervised", "supervised-matched"):
        if arm in by_arm:
            columns.append(RunDir(by_arm[arm]).best)
    return [c for c in columns if c.exists()]


def embeddings(modules: list, data, folder: Path, dataset: str) -> None:
    """A t-SNE plot of each Grad-CAM column's backbone on the test set."""
    for module in modules:
        name = column_name(module)
        embedding_plot(module, data.sets["test"], data.classes, folder / f"{dataset}-{name}-tsne.png",
                       f"{dataset}: {name} backbone features (t-SNE, test set)")
