"""`fkt bench`: every method through fkt and the bare loop, the same computation, sane figures.

The whole bench and the GPU check script in CPU mode are `slow`."""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from fkt import bench
from fkt.bench import IMPLS, METHODS, extrapolate_seconds, format_table, run_bench
from fkt.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
BATCH, LABELLED = 8, 4  # the tiny bench's batch; the pseudo-label rows' labelled batch, B // 2
# image passes a step at batch 8 (SimCLR): the pseudo-label rows pass the pool twice (weak and strong
# view) and the labelled batch once, functional-fixmatch the SSL term's two views of the pool besides
PASSES = {"supervised": BATCH, "simclr": 2 * BATCH, "functional-clean": 3 * BATCH, "functional-view": 2 * BATCH,
          "fixmatch": 2 * BATCH + LABELLED, "functional-fixmatch": 2 * BATCH + LABELLED + 2 * BATCH}
JOINT = ("fixmatch", "functional-fixmatch")  # a step reads the pool and a labelled batch
IMAGES = {m: BATCH + LABELLED if m in JOINT else BATCH for m in PASSES}  # images a step reads


def bench_args(out: Path | None, **overrides) -> argparse.Namespace:
    values = dict(methods=",".join(PASSES), ssl="simclr", backbone="resnet-tiny", stem="small", image_size=16, batch_size=8,
                  device="cpu", precision="32-true", compile=False, steps=2, warmup=1, repeats=1, out=out)
    values.update(overrides)
    return argparse.Namespace(**values)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """One tiny bench of every method, both implementations. Measured in this process, to spare
    twelve interpreter start-ups; the spawned-process path runs in the GPU-check test below."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench, "measure_in_fresh_process", lambda method, impl, s: bench.measure(method, impl, asdict(s)))
        assert run_bench(bench_args(out)) == 0
    return json.loads(out.read_text())


def rows(report: dict) -> dict[tuple[str, str], dict]:
    return {(r["method"], r["impl"]): r for r in report["results"]}


@pytest.mark.slow
def test_every_method_and_impl_is_measured(report):
    assert set(METHODS) == set(PASSES)
    assert set(rows(report)) == {(m, i) for m in PASSES for i in IMPLS}
    assert report["complete"] is True  # rewritten after each measurement, complete at the end


@pytest.mark.slow
def test_figures_are_positive_and_finite(report):
    for r in report["results"]:
        for key in ("step_ms", "images_per_s", "passes_per_s", "peak_mb", "peak_rss_mb", "first_loss"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["method"], r["impl"], key, r[key])
        assert r["images_per_step"] == IMAGES[r["method"]]  # pool + labelled for the joint rows, in both
        assert r["images_per_s"] == pytest.approx(IMAGES[r["method"]] / (r["step_ms"] / 1e3))
        assert len(r["step_ms_repeats"]) == 1 and len(r["step_ms_all"]) == 1 + 2  # warm-up + timed steps
        assert r["peak_gpu_mb"] is None and r["peak_memory_kind"] == "process max RSS"
        assert r["channels_last"] is True


@pytest.mark.slow
def test_passes_per_image(report):
    for (method, impl), r in rows(report).items():
        assert r["passes_per_step"] == PASSES[method], (method, impl)  # what the step counted, the same in both
        assert r["passes_per_image"] == pytest.approx(PASSES[method] / IMAGES[method]), (method, impl)
        assert r["passes_per_s"] == pytest.approx(r["images_per_s"] * PASSES[method] / IMAGES[method])
    assert rows(report)[("supervised", "fkt")]["passes_per_image"] == 1  # the old rows: per image as before


@pytest.mark.slow
def test_fkt_and_bare_compute_the_same_step(report):
    """Same weights, views, losses and optimizer: the same loss at step 0, and after the updates."""
    by = rows(report)
    for method in PASSES:
        fkt, bare = by[(method, "fkt")], by[(method, "bare")]
        assert fkt["first_loss"] == pytest.approx(bare["first_loss"], rel=1e-6, abs=1e-6), method
        n = len(bare["losses"])
        assert n == 3 and fkt["losses"][:n] == pytest.approx(bare["losses"], rel=1e-4), method


@pytest.mark.slow
def test_ratios_environment_and_table(report):
    ratios = report["ratios"]
    assert set(ratios["fkt_over_bare"]) == set(PASSES)
    by = rows(report)
    for method, ratio in ratios["fkt_over_bare"].items():
        assert ratio == pytest.approx(by[(method, "fkt")]["images_per_s"] / by[(method, "bare")]["images_per_s"])
    assert set(ratios["view_over_simclr_step"]) == set(IMPLS)
    env = report["env"]
    for key in ("torch", "device_name", "cpu_count", "threads", "precision", "batch_size", "image_size", "backbone"):
        assert env[key] not in (None, ""), key
    assert (env["device"], env["precision"], env["batch_size"], env["image_size"], env["backbone"]) == (
        "cpu", "32-true", 8, 16, "resnet-tiny")
    table = format_table(report)
    assert "| method | impl | step ms | images/s | passes/s | peak MB | fkt/bare |" in table
    assert table.count("| fkt |") == len(PASSES) and "functional-view / simclr step time" in table
    assert "fixmatch, functional-fixmatch: joint batches of 8 pool + 4 labelled images a step" in table
    assert env["labelled_batch_size"] == LABELLED
    assert "SSL objective: simclr" in table and env["ssl"] == "simclr" and "teacher fwd/s" not in table
    assert all(r["teacher_forwards_per_image_counted"] == 0 for r in report["results"])  # SimCLR has no teacher


# (method, objective, images through the backbone and through a teacher a step at batch 8): MoCo encodes
# one view through the student and the other through the teacher; the pseudo-label rows read 8 pool
# and 4 labelled images (their teacher, BYOL's, sees the pool's two views)
SAME_STEP_CASES = [("functional-clean", "simclr", 24, 0), ("functional-view", "byol", 16, 16),
                   ("simclr", "byol", 16, 16), ("functional-clean", "moco", 16, 8),
                   ("fixmatch", "simclr", PASSES["fixmatch"], 0),
                   ("functional-fixmatch", "simclr", PASSES["functional-fixmatch"], 0)]


@pytest.mark.parametrize("method, ssl, passes, teacher", SAME_STEP_CASES)
def test_same_losses_in_process(method, ssl, passes, teacher, monkeypatch):
    """The fairness check without the subprocesses: fkt's Lightning step and the bare loop make
    the same loss at every step (same weights, views, terms and optimizer updates), with the
    objective's own part in both; a momentum teacher moves on the same schedule in both."""
    import torch

    from fkt.bench import Settings, quiet, run_bare, run_fkt
    from fkt.ssl import OBJECTIVES, MomentumObjective

    if ssl not in OBJECTIVES:
        pytest.skip(f"no '{ssl}' objective in fkt.ssl.OBJECTIVES yet")
    schedule: list[tuple[int, int]] = []
    original = MomentumObjective.momentum
    monkeypatch.setattr(MomentumObjective, "momentum",
                        lambda self, step, total: schedule.append((step, total)) or original(self, step, total))
    quiet()
    s = Settings(methods=(method,), backbone="resnet-tiny", image_size=16, batch_size=8, steps=2, warmup=1, repeats=1,
                 ssl=ssl)
    fkt = run_fkt(method, s, torch.device("cpu"))
    fkt_schedule, schedule[:] = list(schedule), []
    bare = run_bare(method, s, torch.device("cpu"))
    assert bare["steps_run"] == 3 and fkt["steps_run"] == 4  # fkt's last step only closes the clock
    assert fkt["losses"][0] == pytest.approx(bare["losses"][0], rel=1e-6)
    assert fkt["losses"][:3] == pytest.approx(bare["losses"], rel=1e-4)
    assert fkt["image_passes"] / 4 == bare["image_passes"] / 3 == passes
    assert fkt["teacher_forwards"] / 4 == bare["teacher_forwards"] / 3 == teacher
    assert fkt_schedule[:len(schedule)] == schedule and len(schedule) == (3 if teacher else 0)
    assert len(fkt["stamps"]) == len(bare["stamps"]) == 4


def test_the_pseudo_label_rows_read_joint_batches():
    """fixmatch and functional-fixmatch: FixMatch's term, few labels, and the joint 4-tuple of B pool
    images (with their truth) and B // 2 labelled ones, cycled and sliced as the plain batches; the
    pool is the plain rows' batch, which the joint draw leaves as it was."""
    import torch

    settings = bench.settings_from_args(bench_args(None, methods="fixmatch,functional-fixmatch"))
    assert settings.methods == JOINT
    for method in JOINT:
        config = bench.bench_config(method, settings)
        assert METHODS[method].joint and config.method.pseudo_label == "fixmatch"
        assert config.method.pl_threshold == type(config.method).model_fields["pl_threshold"].default
        assert config.data.few_labels and (config.data.batch_size, config.data.labelled_batch) == (BATCH, LABELLED)
        assert bench.images_per_step(method, settings) == BATCH + LABELLED
    for method in PASSES:
        if method not in JOINT:  # the old rows' configs: no pool, one batch
            config = bench.bench_config(method, settings)
            assert config.method.pseudo_label == "none" and not config.data.few_labels
            assert bench.images_per_step(method, settings) == BATCH
    assert bench.bench_config("functional-fixmatch", settings).method.name == "functional"
    assert bench.bench_config("fixmatch", settings).method.name == "supervised"
    cpu, settings = torch.device("cpu"), replace(settings, steps=6)  # past DISTINCT_BATCHES: the cycle shows
    plain, joint = list(bench.synthetic_loader(settings, cpu)), list(bench.synthetic_loader(settings, cpu, joint=True))
    assert len(plain) == len(joint) == settings.total_steps + 1
    for i, (pair, quad) in enumerate(zip(plain, joint)):
        assert [tuple(x.shape) for x in quad] == [(BATCH, 3, 16, 16), (BATCH,), (LABELLED, 3, 16, 16), (LABELLED,)]
        assert torch.equal(quad[0], pair[0]) and torch.equal(quad[1], pair[1])
        if i >= bench.DISTINCT_BATCHES:
            assert all(torch.equal(a, b) for a, b in zip(quad, joint[i - bench.DISTINCT_BATCHES]))
    assert not torch.equal(joint[0][2], joint[1][2])


def test_the_table_names_the_objective_and_counts_teacher_forwards():
    row = {"impl": "bare", "step_ms": 100.0, "images_per_s": 80.0, "passes_per_s": 160.0, "peak_mb": 900.0,
           "teacher_forwards_per_s": 160.0, "peak_memory_kind": "process max RSS"}
    env = {"backbone": "resnet18", "stem": "small", "image_size": 16, "batch_size": 8, "precision": "32-true",
           "compile": False, "device": "cpu", "device_name": "cpu", "threads": 1, "repeats": 1, "steps": 2,
           "warmup": 1, "ssl": "byol"}
    report = {"env": env, "results": [{**row, "method": "simclr"}, {**row, "method": "simclr", "impl": "fkt"}],
              "ratios": {"fkt_over_bare": {"simclr": 1.0}, "view_over_simclr_step": {}},
              "load_average": {"before": [0, 0, 0], "after": [0, 0, 0]}}
    table = format_table(report)
    assert "SSL objective: byol" in table
    assert "| method | impl | step ms | images/s | passes/s | teacher fwd/s | peak MB | fkt/bare |" in table
    assert "| simclr | fkt | 100.0 | 80 | 160 | 160 | 900 | 1.000 |" in table


def test_the_compile_mode_reaches_torch_compile_in_fkt_and_the_bare_loop(monkeypatch):
    """`--compile-mode reduce-overhead` (CUDA graphs on a GPU) compiles the backbone in that mode in
    both implementations; recorded rather than compiled, which would take minutes on a CPU."""
    from torch import nn

    modes = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kwargs: modes.append(kwargs.get("mode")))
    settings = bench.settings_from_args(bench_args(None, methods="functional-clean", compile_mode="reduce-overhead"))
    assert settings.compile and settings.compile_mode == "reduce-overhead"
    for impl in IMPLS:
        bench.measure("functional-clean", impl, asdict(settings))
    assert modes == ["reduce-overhead", "reduce-overhead"]
    assert bench.settings_from_args(bench_args(None)).compile is False


def test_bad_settings_are_one_line_errors():
    for overrides in ({"methods": "supervised,dino"}, {"methods": "fixmatch,functional-fixmatch,mixmatch"},
                      {"precision": "8-true"}, {"device": "tpu"}, {"steps": 0}, {"batch_size": 1}, {"ssl": "nope"}):
        with pytest.raises(UserError):
            run_bench(bench_args(None, **overrides))


def test_extrapolation():
    fake = {"results": [{"method": "functional-clean", "impl": "fkt", "images_per_s": 5000.0}]}
    assert extrapolate_seconds(fake) == pytest.approx(100 * 50_000 / 5000.0)
    with pytest.raises(KeyError):
        extrapolate_seconds(fake, method="simclr")


# --------------------------------------------------------------------------- the GPU check's parts

def test_synthetic_cifar_is_read_by_fkt_and_is_learnable(tmp_path):
    from fkt.data.cifar10 import load

    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "synthetic_cifar.py"), str(tmp_path),
                    "--train-per-class", "6", "--test-per-class", "3"], check=True)
    folder = tmp_path / "cifar-10-batches-py"
    with open(folder / "data_batch_1", "rb") as handle:  # keys as in the real files: py2 strings
        entry = pickle.load(handle, encoding="bytes")
    assert entry[b"data"].dtype == np.uint8 and entry[b"data"].shape[1] == 3072
    with open(folder / "batches.meta", "rb") as handle:
        assert pickle.load(handle, encoding="bytes")[b"label_names"][0] == b"airplane"
    bundle = load(tmp_path)
    assert len(bundle.classes) == 10 and bundle.classes[0] == "airplane"
    assert bundle.train.pixels.shape == (60, 32, 32, 3) and bundle.test.pixels.shape == (30, 32, 32, 3)
    assert np.bincount(bundle.train.targets, minlength=10).tolist() == [6] * 10
    # class-dependent: nearest class mean on each image's colour balance (per-channel mean and
    # spread, relative to the image's own) is right far above chance (0.1)

    def colour(pixels: np.ndarray) -> np.ndarray:
        p = pixels.astype(float)
        m, s = p.mean((1, 2)), p.std((1, 2))
        return np.concatenate([m - m.mean(1, keepdims=True), 100 * s / s.sum(1, keepdims=True)], 1)

    x, y = colour(bundle.train.pixels), bundle.train.targets
    means = np.stack([x[y == c].mean(0) for c in range(10)])
    predicted = np.argmin(((colour(bundle.test.pixels)[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (predicted == bundle.test.targets).mean() > 0.6


@pytest.mark.slow
def test_gpu_check_script_runs_on_cpu(tmp_path):
    """The whole script, in CPU mode with tiny sizes: its logic, not its figures."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    env = {**os.environ, "DEVICE": "cpu", "PRECISION": "32-true", "METHODS": "functional-clean",
           "BATCH": "8", "SIZE": "16", "STEPS": "1", "WARMUP": "1", "REPEATS": "1",
           "TRAIN_PER_CLASS": "4", "TEST_PER_CLASS": "2", "TRAIN_BATCH": "8", "TRAIN_EPOCHS": "1",
           "COMPILE_METHODS": "", "CACHE_JPEGS": "24", "CACHE_BACKBONE": "resnet-tiny", "CACHE_SIZE": "16",
           "BACKBONE": "resnet-tiny",
           "CACHE_BATCH": "4", "PYTHON": sys.executable}
    out = tmp_path / "check"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "100 epochs" in done.stdout
    report = json.loads((out / "bench.json").read_text())
    assert {(r["method"], r["impl"]) for r in report["results"]} == {
        ("functional-clean", i) for i in IMPLS}
    metrics = json.loads((out / "train" / "metrics.json").read_text())
    assert metrics["compute"]["epochs"] == 1 and metrics["test"]["accuracy"] >= 0
    summary = (out / "summary.txt").read_text()
    assert "extrapolated" in summary and "train" in summary
    assert "from the image cache" in summary and "waiting for data with the cache" in summary
