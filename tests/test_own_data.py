"""docs/own-data.md as a new user follows it, on a generated folder of 300 labelled and 100
unlabelled images: the page's commands are read from the page itself, so page and test cannot
drift. Blocks marked `<!-- tested: ... -->` run as written, in a folder holding the generated
`DATA/` (the one substitution: the predict/export block's `runs/mine` becomes the first run's
`runs/first`, the only run the test makes). Every other command on the page is parsed and its
config resolved and planned, without training. Batches larger than their set are capped."""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import pytest
from conftest import colour_image, make_imagefolder

from fkt.cli import build_parser, config_from_args

PAGE = Path(__file__).resolve().parents[1] / "docs" / "own-data.md"
CLASSES = ["cat", "dog", "fox"]
LABELLED, UNLABELLED = 300, 100
TESTED = re.compile(r"^<!-- tested:[^>]*-->\n```sh\n(.*?)^```", re.S | re.M)
FENCE = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)


def commands(block: str) -> list[list[str]]:
    """The `fkt ...` commands of a shell block, continuations joined, as argument lists (after `fkt`)."""
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        if line.strip().startswith("fkt "):  # not a file listing or prose in a plain fence
            found.append(shlex.split(line, comments=True)[1:])
    return found


def marked_blocks() -> list[list[list[str]]]:
    return [commands(block) for block in TESTED.findall(PAGE.read_text())]


def other_commands() -> list[list[str]]:
    """Every fkt command on the page outside the tested blocks."""
    text = PAGE.read_text()
    tested = {tuple(c) for block in marked_blocks() for c in block}
    return [c for block in FENCE.findall(text) for c in commands(block) if tuple(c) not in tested]


def make_own_folder(root: Path) -> Path:
    """DATA/train/<class>/ with 300 labelled images (no test/: the test split is carved from train/)
    and DATA/unlabelled/ with 100 more in two subfolders, as the page lays them out."""
    data = root / "DATA"
    make_imagefolder(data, num_classes=len(CLASSES), class_names=CLASSES, train_per_class=LABELLED // 3,
                     test_per_class=None, image_size=20)
    for i in range(UNLABELLED):
        folder = data / "unlabelled" / f"batch{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        colour_image(i % 3, 3, (20 + i % 5, 20)).save(folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    return data


def with_out(argv: list[str], old: str, new: str) -> list[str]:
    return [new + token[len(old):] if token.startswith(old) else token for token in argv]


def test_the_page_marks_a_first_run_and_a_predict_and_export_block():
    first, use = marked_blocks()
    assert [argv[0] for argv in first] == ["reproduce"] and "--preset" in first[0]
    assert [argv[0] for argv in use] == ["predict", "export"]


def test_every_other_command_on_the_page_resolves_and_the_comparison_plans(tmp_path):
    """The comparison, the GPU and ImageNet variants and the no-preset command: their configs are
    valid; the comparison's cells plan as the page says (compute matched), without training."""
    from fkt.reproduce import grid_plan

    others = other_commands()
    assert {argv[0] for argv in others} == {"reproduce", "train"} and len(others) >= 4
    configs = [config_from_args(build_parser().parse_args(argv)) for argv in others]
    assert all(c.data.dataset == "imagefolder" and str(c.data.root) == "DATA" for c in configs)
    comparison = configs[0]  # the first: the preset as it is
    assert others[0][0] == "reproduce" and comparison.grid.seeds == [0, 1, 2]
    plan = {cell.config.arm: cell.config for cell in grid_plan(comparison, tmp_path / "plan") if cell.config.seed == 0}
    assert sorted(plan) == ["functional", "representational", "supervised-matched"]
    # the page: 30 epochs; representational pretrains and fine-tunes as long; supervised-matched 5 times as many
    assert plan["functional"].trainer.epochs == plan["representational"].trainer.pretrain_epochs == 30
    assert plan["supervised-matched"].trainer.epochs == 5 * 30


def readme_own_data_commands() -> list[list[str]]:
    """The README's `fkt train ... --dataset imagefolder ... --unlabelled-root DATA/...` commands, if it shows any."""
    readme = PAGE.parents[1] / "README.md"
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", readme.read_text(), re.S | re.M) if readme.exists() else []
    return [argv for lang, block in blocks if lang in ("sh", "bash", "") for argv in commands(block)
            if argv[0] == "train" and "imagefolder" in argv and "--unlabelled-root" in argv]


def test_the_no_preset_command_fits_a_300_image_folder(tmp_path):
    """`fkt train`'s defaults (batch 256) on 300 labelled images, as the page (and the README, where
    it shows the command) give it: the labelled batch is capped to the 216 training images, with the
    note the page quotes; the caller's config is left as it was. Data only: 100 epochs at 224 px
    are not a test."""
    from fkt.data.module import FKTDataModule

    make_own_folder(tmp_path)
    page = [argv for argv in other_commands() if argv[0] == "train"]
    assert len(page) == 1
    for argv in page + readme_own_data_commands():
        config = config_from_args(build_parser().parse_args(argv))
        assert (config.data.root, config.data.unlabelled_root) == (Path("DATA"), Path("DATA/unlabelled")), argv
        config.data.root, config.data.unlabelled_root = tmp_path / "DATA", tmp_path / "DATA" / "unlabelled"
        data = FKTDataModule(config)
        data.setup()
        assert (data.config.data.batch_size, data.config.data.labelled_batch) == (256, 216)
        assert (config.data.batch_size, config.data.labelled_batch) == (256, 256)
        note, = [n for n in data.bundle.notes if n.startswith("batches capped")]
        quoted = "data.batch_size (the labelled batch)=256 is larger than the labelled set (216 images): using 216"
        assert quoted in note and quoted in " ".join(PAGE.read_text().split())


def test_a_pool_batch_larger_than_the_pool_is_capped_and_fitting_batches_are_not_touched(tmp_path):
    from fkt.config import build_config
    from fkt.data.module import FKTDataModule

    data_root = make_own_folder(tmp_path)
    base = {"data": {"dataset": "imagefolder", "root": str(data_root), "image_size": 16}}
    capped = FKTDataModule(build_config({**base, "method": {"name": "supervised"}}))
    capped.setup()
    assert capped.config.data.batch_size == 216
    assert capped.bundle.notes[-1] == ("batches capped to fit the data: data.batch_size=256 is larger than "
                                       "the training split (216 images): using 216")
    fitting = build_config({"data": {**base["data"], "batch_size": 64, "labelled_batch_size": 32,
                                     "unlabelled_root": str(data_root / "unlabelled")}})
    untouched = FKTDataModule(fitting)
    untouched.setup()
    assert untouched.config == fitting and not any("capped" in n for n in untouched.bundle.notes)


def test_a_capped_batch_under_two_images_is_refused_in_one_line(tmp_path):
    from fkt.config import build_config
    from fkt.data.base import DataBundle, ImageSet
    from fkt.data.module import FKTDataModule
    from fkt.errors import UserError

    one = ImageSet(targets=[0], files=[tmp_path / "a.png"])
    bundle = DataBundle("imagefolder", ["a", "b"], one, None, source="generated")
    data = FKTDataModule(build_config({"data": {"dataset": "imagefolder", "batch_size": 8}}))
    with pytest.raises(UserError, match=r"^data.batch_size=8: the training split has only 1 image; "
                                        r"training needs at least 2 a batch$"):
        data.check_sizes(one, 1, 1, bundle)


@pytest.mark.slow
def test_the_pages_own_data_commands_run_as_written(tmp_path, fkt_cli):
    make_own_folder(tmp_path)
    first, use = marked_blocks()
    reproduce, = first
    result = fkt_cli(*reproduce, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / reproduce[reproduce.index("--out") + 1]
    assert (out / "results.md").exists() and (out / "report.md").exists()
    runs = {arm: json.loads((out / "runs" / f"imagefolder-{arm}-seed0" / "metrics.json").read_text())
            for arm in ("supervised-matched", "representational", "functional")}
    passes = {run["compute"]["image_passes"] for run in runs.values()}
    assert len(passes) == 1  # compute matched
    # the page's figure for the preset: 30 epochs of this one-epoch run's passes
    assert "(19,200 each for 300 labelled and 100 unlabelled images)" in " ".join(PAGE.read_text().split())
    assert 30 * passes.pop() == 19_200
    functional = runs["functional"]
    assert functional["images"] == {"labelled": 216, "unlabelled": UNLABELLED}
    assert not any("capped" in note for note in functional["data_notes"])  # the preset's batches fit

    for argv in use:
        result = fkt_cli(*with_out(argv, "runs/mine", str(out.relative_to(tmp_path))), cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == UNLABELLED and {row["class"] for row in rows} <= set(CLASSES)
    model = json.loads((out / "model" / "model.json").read_text())
    assert (out / "model" / "model.pt").exists() and model["classes"] == CLASSES
