"""Compute counted where it is spent: the step context's views and counts, the FLOPs of a step,
and the grid's compute matching planned from the same counts (no hand-kept table).

The planned budgets are checked against what real Lightning steps count, for every objective;
MoCo (one student view a step) is the case a hand-kept "two views" table got wrong.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from conftest import folder_grid

from fkt.compute import count_step, passes_per_step
from fkt.config import build_config, deep_merge
from fkt.data.transforms import SimCLRViews, WeakView
from fkt.methods import MODULES, Functional, Pretrain, Supervised
from fkt.reproduce import grid_plan, run_grid
from fkt.ssl import OBJECTIVES
from fkt.step import StepContext

# images through the student backbone per image of the SSL batch, per objective
SSL_VIEWS = {name: 1 if name == "moco" else 2 for name in OBJECTIVES}


def config(**sections):
    base = {"data": {"image_size": 16, "batch_size": 8},
            "trainer": {"accelerator": "cpu", "progress_bar": False, "epochs": 1, "pretrain_epochs": 1}}
    return build_config(deep_merge(base, sections))


def uint8_images(n, side=16, seed=0):
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- the step context

def test_a_steps_views_depend_on_its_seed_alone_not_on_other_draws():
    images = uint8_images(6)
    ctx = StepContext(nn.Identity(), 16)
    ctx.start(3, seed=1234)
    first = (ctx.view(images), ctx.weak(images))
    torch.manual_seed(0)
    torch.rand(1000)  # anything else that draws from torch's global generator in between
    ctx.start(3, seed=1234)
    again = (ctx.view(images), ctx.weak(images))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    ctx.start(4, seed=4321)
    assert not torch.equal(ctx.view(images), first[0])
    # the same stream a generator of that seed gives the view makers directly
    g = torch.Generator().manual_seed(1234)
    assert torch.equal(first[0], SimCLRViews(16)(images, g)) and torch.equal(first[1], WeakView()(images, g))


def test_the_context_counts_every_pass_per_term_and_teacher_forwards_apart():
    ctx = StepContext(nn.Flatten(), 16)
    ctx.world_size = 2  # each rank's shard counts for every rank (equal shards)
    ctx.start(0, seed=0)
    images = uint8_images(4)
    ctx.encode(ctx.view(images), "ssl")
    ctx.encode(ctx.view(images), "ssl")
    ctx.encode(ctx.clean(images), "ce")
    ctx.teacher_encode(nn.Flatten(), ctx.view(images))
    assert ctx.passes == {"ssl": 16, "ce": 8} and ctx.image_passes == 24 and ctx.teacher_forwards == 8
    assert ctx.steps == 1
    ctx.steps_per_epoch = 4
    ctx.start(6, seed=1)
    assert ctx.epoch == 1.5 and ctx.steps == 2
    restored = StepContext(nn.Flatten(), 16)
    restored.load_state_dict(ctx.state_dict())
    assert (restored.passes, restored.teacher_forwards, restored.steps) == (ctx.passes, 8, 2)
    assert torch.equal(restored.generator.get_state(), ctx.generator.get_state())


def test_the_next_stage_starts_where_the_views_left_the_stream():
    ctx = StepContext(nn.Identity(), 16)
    ctx.start(0, seed=77)
    ctx.view(uint8_images(3))
    torch.manual_seed(0)
    ctx.continue_stream()
    after = torch.rand(3)
    torch.manual_seed(77)  # the views drew from the global generator before they had their own
    SimCLRViews(16)(uint8_images(3))
    assert torch.equal(after, torch.rand(3))


# --------------------------------------------------------------------------- one step, counted

@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_a_probe_step_counts_each_objectives_passes(name):
    joint = count_step(Functional, config(method={"ssl": name}), num_classes=3)
    assert joint.passes == {"ssl": 8 * SSL_VIEWS[name], "ce": 8}
    teachers = {"byol": 16, "dino": 16, "moco": 8}
    assert joint.teacher_forwards == teachers.get(name, 0)
    few = config(method={"ssl": name}, data={"labels_per_class": 2, "labelled_batch_size": 4})
    if name != "supcon":  # supcon's positives are labels: refused with few labels (tests/test_ssl_objectives.py)
        assert count_step(Functional, few, num_classes=3).passes == {"ssl": 8 * SSL_VIEWS[name], "ce": 4}
    assert count_step(Pretrain, config(method={"ssl": name}), num_classes=3).passes == {"ssl": 8 * SSL_VIEWS[name]}


def test_a_probe_step_leaves_every_generator_as_it_was():
    torch.manual_seed(5)
    state = torch.get_rng_state()
    count_step(Functional, config(), num_classes=3, flops=True)
    assert torch.equal(torch.get_rng_state(), state)


def test_flops_of_a_supervised_step_are_its_forward_and_backward():
    cfg = config(method={"name": "supervised"})
    step = count_step(Supervised, cfg, num_classes=3, flops=True)
    torch.manual_seed(0)
    module = Supervised(config=cfg.to_dict(), num_classes=3)
    with FlopCounterMode(display=False) as counter:
        module(module.normalize(uint8_images(8)))
    forward = counter.get_total_flops()
    assert step.flops["ce"] == step.flops["total"]
    assert 2.5 * forward < step.flops["total"] < 3.5 * forward  # backward ~ twice the forward


@pytest.mark.parametrize("classifier_input", ["clean", "view"])
def test_the_terms_flops_add_up_unless_they_share_a_forward(classifier_input):
    step = count_step(Functional, config(method={"classifier_input": classifier_input}), num_classes=3, flops=True)
    ssl, ce, total = step.flops["ssl"], step.flops["ce"], step.flops["total"]
    alone = count_step(Pretrain, config(), num_classes=3, flops=True).flops["total"]
    if classifier_input == "clean":
        assert ssl == alone  # the SSL term costs what an SSL pretraining step costs
        assert ssl + ce == total
    else:  # the cross-entropy reuses the first view's features: no pass of its own, its classifier's
        # forward counted with the SSL term's, its backward running through the shared features again
        assert 0 < ssl - alone < 1e-3 * alone
        assert total < ssl + ce


# --------------------------------------------------------------------------- planned = counted

class Batches(Dataset):
    """Batches in a stream's layout, already made (a DataLoader with batch_size=None passes them on)."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return self.batches[i]


def lightning_passes(method: str, cfg, steps: int = 2) -> int:
    """Backbone passes a step of `method` counted by the module itself, in a real Trainer.fit."""
    module = MODULES[method](config=cfg.to_dict(), num_classes=3)
    data = cfg.data
    if module.train_data == "joint" and data.few_labels:
        batch = (uint8_images(data.batch_size, seed=1), uint8_images(data.labelled_batch, seed=2),
                 torch.arange(data.labelled_batch) % 3)
    else:
        n = data.labelled_batch if module.train_data == "labelled" else data.batch_size
        batch = (uint8_images(n, seed=1), torch.arange(n) % 3)
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, DataLoader(Batches([batch] * steps), batch_size=None))
    assert module.context.steps == steps
    return module.image_passes // steps


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
@pytest.mark.parametrize("labels", ["all", "few"])
def test_the_passes_the_grid_plans_are_the_passes_a_step_counts(name, labels):
    """The planner probes a tiny backbone at 16 px; a real step of the real module at 32 px counts the same."""
    if name == "supcon" and labels == "few":
        pytest.skip("supcon is refused with few labels")
    few = {"labels_per_class": 2, "labelled_batch_size": 4} if labels == "few" else {}
    cfg = config(method={"ssl": name}, data={"image_size": 32, **few})
    for method in ("functional", "pretrain", "supervised"):
        assert passes_per_step(cfg, method) == lightning_passes(method, cfg), method


def test_mocos_matched_arm_is_planned_from_mocos_own_passes():
    """One student view a step: a functional epoch is 2 passes an image, so supervised-matched trains
    twice the functional epochs, not three times (the old hand-kept "two views" table's answer)."""
    grid = {"methods": ["functional", "supervised-matched", "representational"], "seeds": [0]}
    plans = {}
    for ssl in ("moco", "simclr"):
        cfg = build_config({"method": {"ssl": ssl}, "trainer": {"epochs": 2}, "grid": grid})
        plans[ssl] = {c.config.arm: c.config.trainer.epochs for c in grid_plan(cfg, "out")}
    assert plans["moco"]["supervised-matched"] == 4 and plans["simclr"]["supervised-matched"] == 6


def test_a_moco_grid_gives_its_matched_arm_exactly_the_functional_arms_passes(make_dataset, tmp_path):
    data = make_dataset("imagefolder", num_classes=3, train_per_class=12, test_per_class=2, image_size=16)
    cfg = folder_grid(data.root, {"epochs": 1, "pretrain_epochs": 1},
                      {"methods": ["functional", "supervised-matched"], "seeds": [0]},
                      method={"ssl": "moco"}, evaluate={"probes": []})
    run_grid(cfg, tmp_path / "grid")
    runs = {r.parent.name: r for r in (tmp_path / "grid" / "runs").glob("*/metrics.json")}
    import json

    passes = {name.split("-")[1]: json.loads(path.read_text())["compute"] for name, path in runs.items()}
    functional, matched = passes["functional"], passes["supervised"]
    assert functional["passes_by_term"]["ssl"] == functional["passes_by_term"]["ce"]  # one student view
    assert matched["image_passes"] == functional["image_passes"] > 0
    assert matched["flops"]["total"] < functional["flops"]["total"]  # MoCo's teacher forwards are not passes


def test_results_say_when_a_matched_arm_drifted_from_the_functional_arms_passes():
    from fkt.report.tables import unmatched_note

    def run(arm, seed, passes):
        return {"dataset": "d", "arm": arm, "method": arm, "seed": seed, "compute": {"image_passes": passes}}

    fine = [run("functional", 0, 19200), run("supervised-matched", 0, 19000), run("supervised", 0, 6400)]
    assert unmatched_note(fine) == ""  # rounding of whole epochs; the plain supervised arm is not matched
    drifted = fine + [run("functional", 1, 19200), run("supervised-matched", 1, 25600)]
    note = unmatched_note(drifted)
    assert "seed 1" in note and "25,600" in note and "seed 0" not in note
