"""`fkt bench`: steady-state training throughput of each method, through fkt and in bare PyTorch.

For every method, two implementations of the same training step are timed on the same
fixed, in-memory synthetic dataset (random uint8 images already on the device, 10 classes):

- `fkt`: the real path. The method's Lightning module (`fkt.methods.MODULES`, built from a
  `Config` as the engine builds it, so channels-last, heads, views, losses and optimizer are
  fkt's own) trained by a Lightning Trainer with fkt's settings (precision, no validation,
  no sanity steps), minus loggers, checkpoints and the progress bar. A callback stamps
  `time.perf_counter()` at every `on_train_batch_start`, so each interval holds one whole
  Lightning step: the fetch, hooks, `training_step` (its NaN guard and `self.log` calls),
  backward and the optimizer.
- `bare`: a plain loop over the same loader and the same module's step: its `losses` through its
  `fkt.step.StepContext` (views, counted passes, the step a momentum teacher reads), its
  `combine` and an optimizer from `fkt.optim.build_optimizer`, but no Lightning Trainer, hooks,
  callbacks or logging, so the two implementations do the same work for any `--ssl`, and the
  ratio is what fkt's Lightning path costs on top of it. Mixed precision is a plain `torch.autocast`
  (its weight-cast cache on, where Lightning turns it off) and a GradScaler for 16-mixed;
  `--compile` compiles the backbone in place in both. The clock is read at the same place,
  after the fetch.

Each (method, impl) runs in a fresh spawned process, so peak memory (RSS on CPU,
`torch.cuda.max_memory_allocated` on a GPU) is its own. The weights are built from the same
seed in the same order, and each step's views are drawn from the seed fkt gives that step
(`fkt.callbacks.step_seed`), so both implementations draw the same views and make the same loss
at every step (`first_loss` and `losses` in the JSON; the tests assert it): the comparison is of
the same computation.

Threads: torch's default (the CPU count) unless OMP_NUM_THREADS says otherwise; on a CPU
shared with other busy processes, two OpenMP threads on two cores can be several times
slower than one, so note the load average printed with the table.

The rows (`METHODS`), with their image passes a step (images through the backbone, with SimCLR;
B = `--batch-size`):

- supervised: the cross-entropy on B images, B passes (1 per image);
- simclr: the SSL pretraining step on B images, 2B (its two views);
- functional-clean: SSL + cross-entropy on the clean image, 3B;
- functional-view: SSL + cross-entropy on the SSL view's features, 2B;
- fixmatch: the supervised module with FixMatch's pseudo-label term (`method.pseudo_label`), on a
  joint batch: B pool images and a labelled batch of B // 2 (mu = 2, as the few-labels-ssl preset):
  B // 2 (the cross-entropy) + 2B (the pool's weak and strong views, in one batch);
- functional-fixmatch: the functional module with few labels and the FixMatch term, on the same
  joint batch: the SSL term's two views of the pool (2B) + B // 2 + 2B.

Figures per (method, impl): step time (per repeat: the mean of `steps` consecutive step
intervals after `warmup` untimed steps; reported: the median over `repeats`), images/s
(the images a step reads, over the step time: B, or B + B // 2 for the joint rows), image passes/s
(as the step counted them), teacher forwards/s (images through a momentum teacher, forward only,
where the objective has one) and peak memory; per method the fkt/bare throughput ratio; and the
functional-view / simclr step-time ratio.

`--ssl NAME` picks the SSL objective (default simclr). The method labels stay those of SimCLR's
days: "simclr" is the SSL pretraining step with whichever objective `--ssl` names, and the
table's header names it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fkt.errors import UserError

SEED = 0
NUM_CLASSES = 10
DISTINCT_BATCHES = 4  # the synthetic dataset: this many different batches, cycled
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
IMPLS = ("bare", "fkt")


@dataclass(frozen=True)
class MethodSpec:
    module: str                 # key of fkt.methods.MODULES
    config_method: str          # method.name in the Config
    classifier_input: str       # method.classifier_input
    pseudo_label: str = "none"  # method.pseudo_label (fkt.pseudo)
    # the joint batch: (pool, pool truth, labelled images, targets), B pool images and B // 2
    # labelled (few labels, as a pseudo-label term needs); else (images, targets), B of each
    joint: bool = False

    @property
    def ssl(self) -> bool:
        return self.module != "supervised"


# What each step makes (its image passes per image, its teacher forwards) is counted while it runs.
METHODS: dict[str, MethodSpec] = {
    "supervised": MethodSpec("supervised", "supervised", "clean"),
    "simclr": MethodSpec("pretrain", "representational", "clean"),
    "functional-clean": MethodSpec("functional", "functional", "clean"),
    "functional-view": MethodSpec("functional", "functional", "view"),
    "fixmatch": MethodSpec("supervised", "supervised", "clean", pseudo_label="fixmatch", joint=True),
    "functional-fixmatch": MethodSpec("functional", "functional", "clean", pseudo_label="fixmatch", joint=True),
}


def labelled_batch(s: "Settings") -> int:
    """The joint rows' labelled images a step: B // 2 (FixMatch's mu = 2, as the few-labels-ssl preset)."""
    return max(1, s.batch_size // 2)


def images_per_step(method: str, s: "Settings") -> int:
    """The images a step reads: the batch, or the pool's and the labelled batch for a joint row."""
    return s.batch_size + labelled_batch(s) if METHODS[method].joint else s.batch_size


@dataclass(frozen=True)
class Settings:
    methods: tuple[str, ...] = tuple(METHODS)
    backbone: str = "resnet18"
    stem: str = "small"
    image_size: int = 32
    batch_size: int = 128
    device: str = "cpu"  # resolved: cpu, cuda or cuda:N
    precision: str = "32-true"
    compile: bool = False
    compile_mode: str = "default"
    steps: int = 20
    warmup: int = 5
    repeats: int = 3
    seed: int = SEED
    num_classes: int = NUM_CLASSES
    ssl: str = "simclr"  # the SSL objective (method.ssl)

    @property
    def timed(self) -> int:
        return self.steps * self.repeats

    @property
    def total_steps(self) -> int:
        """Step intervals recorded: warm-up, then `repeats` blocks of `steps`."""
        return self.warmup + self.timed


# --------------------------------------------------------------------------- settings

def resolve_device(name: str) -> str:
    """The device as `Settings` holds it (its index written out: torch.cuda.set_device and Lightning want one)."""
    from fkt.hardware import resolve_device as resolve

    return str(resolve(name))


def settings_from_args(args: argparse.Namespace) -> Settings:
    from fkt.models import BACKBONES
    from fkt.ssl import OBJECTIVES, check_objective

    methods = tuple(m.strip() for m in str(args.methods).split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise UserError(f"--methods {args.methods}: choose from {', '.join(METHODS)}")
    if args.backbone not in BACKBONES:
        raise UserError(f"--backbone {args.backbone}: choose from {', '.join(BACKBONES)}")
    ssl = getattr(args, "ssl", None) or "simclr"
    if ssl not in OBJECTIVES:
        raise UserError(f"--ssl {ssl}: choose from {', '.join(OBJECTIVES)}")
    if args.precision not in PRECISIONS:
        raise UserError(f"--precision {args.precision}: choose from {', '.join(PRECISIONS)}")
    for flag, value, low in (("--image-size", args.image_size, 8), ("--batch-size", args.batch_size, 2),
                             ("--steps", args.steps, 1), ("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0)):
        if value < low:
            raise UserError(f"{flag} {value}: must be at least {low}")
    settings = Settings(methods=tuple(dict.fromkeys(methods)), backbone=args.backbone, stem=args.stem,
                        image_size=args.image_size, batch_size=args.batch_size, device=resolve_device(args.device),
                        precision=args.precision, compile=bool(args.compile or getattr(args, "compile_mode", None)),
                        compile_mode=getattr(args, "compile_mode", None) or "default", steps=args.steps,
                        warmup=args.warmup, repeats=args.repeats, ssl=ssl)
    for method in settings.methods:  # the objective's own limits (a batch too small, say), in one line
        if METHODS[method].ssl:
            check_objective(bench_config(method, settings))
    return settings


def bench_config(method: str, s: Settings):
    """The run config fkt would use for this method (defaults for everything not benchmarked)."""
    from fkt.config import build_config

    spec = METHODS[method]
    accelerator = "gpu" if s.device.startswith("cuda") else "cpu"
    # one device: the CPU, or the GPU's index ("1," is Lightning's spelling of device 1)
    devices = f"{s.device.split(':')[1] if ':' in s.device else 0}," if accelerator == "gpu" else 1
    trainer = {"accelerator": accelerator, "devices": devices, "precision": s.precision, "progress_bar": False,
               "epochs": 1, "pretrain_epochs": 1, "compile": s.compile, "compile_mode": s.compile_mode,
               "sync_batchnorm": False}
    # no logged gradient cosine: its extra backward on log steps is a measurement the bare loop
    # does not make (its cost is in the README), not fkt's overhead
    method_cfg = {"name": spec.config_method, "classifier_input": spec.classifier_input, "ssl": s.ssl,
                  "grad_cosine": False}
    data = {"image_size": s.image_size, "batch_size": s.batch_size}
    if spec.pseudo_label != "none":
        # pl_threshold at its default: however few images pass it on random data, the step's work is the same
        method_cfg["pseudo_label"] = spec.pseudo_label
    if spec.joint:
        # few labels: labels_per_class only marks them (the bench reads no dataset, so its value is
        # never used); the labelled batch is B // 2 beside the B pool images
        data.update(labels_per_class=1, labelled_batch_size=labelled_batch(s))
    return build_config({
        "method": method_cfg,
        "data": data,
        "model": {"backbone": s.backbone, "stem": s.stem},
        "trainer": trainer,
        "seed": s.seed,
    }, source="bench")


# --------------------------------------------------------------------------- shared pieces

def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_all(seed: int) -> None:
    import torch

    torch.manual_seed(seed)  # every device's generator too


def synthetic_loader(s: Settings, device, joint: bool = False):
    """A DataLoader over a fixed in-memory dataset of random uint8 images on `device`.

    Item i is batch i (cycling over DISTINCT_BATCHES different ones), so a fetch is a slice,
    the same in both implementations; `batch_size=None` leaves it as it is. `joint`: the joint
    step's (pool, pool truth, labelled images, targets), the pool and its truth the images and
    targets of the plain batch, the labelled batch (`labelled_batch`) drawn after them."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    gen = torch.Generator().manual_seed(s.seed + 12345)
    n = DISTINCT_BATCHES * s.batch_size
    images = torch.randint(0, 256, (n, 3, s.image_size, s.image_size), dtype=torch.uint8, generator=gen).to(device)
    targets = torch.randint(0, s.num_classes, (n,), generator=gen).to(device)
    if joint:  # drawn after the plain batch's, which stays as it was
        m = labelled_batch(s)
        labelled = torch.randint(0, 256, (DISTINCT_BATCHES * m, 3, s.image_size, s.image_size), dtype=torch.uint8,
                                 generator=gen).to(device)
        labels = torch.randint(0, s.num_classes, (DISTINCT_BATCHES * m,), generator=gen).to(device)

    class Batches(Dataset):
        def __len__(self) -> int:
            return s.total_steps + 1  # the last one only closes the last interval

        def __getitem__(self, i: int):
            lo = (i % DISTINCT_BATCHES) * s.batch_size
            if joint:
                at = (i % DISTINCT_BATCHES) * m
                return (images[lo:lo + s.batch_size], targets[lo:lo + s.batch_size],
                        labelled[at:at + m], labels[at:at + m])
            return images[lo:lo + s.batch_size], targets[lo:lo + s.batch_size]

    return DataLoader(Batches(), batch_size=None, shuffle=False, num_workers=0)


def quiet() -> None:
    """Lightning's banners and advice off (its loggers are set up when it is imported, so after that)."""
    import pytorch_lightning  # noqa: F401

    for message in (".*does not have many workers.*", ".*LeafSpec.*", ".*smaller than the logging interval.*",
                    ".*Tensor Cores.*", ".*GPU available but not used.*", ".*TF32.*", ".*litlogger.*",
                    ".*no `val_dataloader`.*"):
        warnings.filterwarnings("ignore", message=message)
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


# --------------------------------------------------------------------------- the fkt path

def run_fkt(method: str, s: Settings, device) -> dict[str, Any]:
    import pytorch_lightning as pl
    import torch

    from fkt.hardware import make_trainer
    from fkt.methods import MODULES

    config = bench_config(method, s)
    seed_all(s.seed)
    module = MODULES[METHODS[method].module](config=config.to_dict(), num_classes=s.num_classes)

    class StepClock(pl.Callback):
        def __init__(self) -> None:
            self.stamps: list[float] = []
            self.losses: list[torch.Tensor] = []  # detached, read after the run (no sync per step)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            sync(device)
            self.stamps.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(outputs["loss"].detach())

    clock = StepClock()
    trainer = make_trainer(  # fkt's hardware settings; no loggers, checkpoints, progress bar or validation
        config,
        max_epochs=1,
        max_steps=s.total_steps + 1,
        logger=False,
        enable_checkpointing=False,
        callbacks=[clock],
        log_every_n_steps=config.trainer.log_every_n_steps,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=synthetic_loader(s, device, METHODS[method].joint))
    sync(device)
    return {"stamps": clock.stamps[: s.total_steps + 1], "losses": [float(x) for x in clock.losses],
            "image_passes": module.image_passes, "teacher_forwards": module.context.teacher_forwards,
            "steps_run": len(clock.losses), "channels_last": module.memory_format == torch.channels_last}


# --------------------------------------------------------------------------- the bare loop

def run_bare(method: str, s: Settings, device) -> dict[str, Any]:
    """The same module's step (its `losses` through its `StepContext`, its `combine`, its optimizer
    settings), in a plain loop: no Trainer, no hooks, callbacks or logging."""
    import torch

    from fkt.callbacks import step_seed
    from fkt.methods import MODULES
    from fkt.models import compile_backbone
    from fkt.optim import build_optimizer

    cfg = bench_config(method, s)
    seed_all(s.seed)
    module = MODULES[METHODS[method].module](config=cfg.to_dict(), num_classes=s.num_classes)  # fkt's weights
    module.to(device).train()
    module.settle_trainable()
    if module.ssl is not None:
        module.ssl.distributed(1)  # as Method.setup, on one rank
    ctx = module.context
    ctx.total_steps = ctx.steps_per_epoch = s.total_steps + 1  # fkt's Trainer: max_steps, one epoch
    optimizer = build_optimizer(module.optimizer_settings(), module.trainable_parameters())
    if s.compile:
        compile_backbone(module.backbone, s.compile_mode)  # as fkt does
    amp_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(s.precision)
    scaler = torch.amp.GradScaler(device.type) if s.precision == "16-mixed" else None

    def step_loss(batch: tuple) -> torch.Tensor:
        return module.combine(module.losses(ctx, batch))

    stamps: list[float] = []
    losses: list[torch.Tensor] = []
    for i, batch in enumerate(synthetic_loader(s, device, METHODS[method].joint)):
        sync(device)
        stamps.append(time.perf_counter())
        if i == s.total_steps:
            break
        ctx.start(i, step_seed(s.seed, module.name, i, 0))  # as fkt's StepSeed callback
        if amp_dtype is not None:
            with torch.autocast(device.type, dtype=amp_dtype):
                loss = step_loss(batch)
        else:
            loss = step_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        losses.append(loss.detach())
    sync(device)
    return {"stamps": stamps, "losses": [float(x) for x in losses], "image_passes": ctx.image_passes,
            "teacher_forwards": ctx.teacher_forwards, "steps_run": len(losses),
            "channels_last": module.memory_format == torch.channels_last}


# --------------------------------------------------------------------------- one measurement

def summarize(stamps: list[float], s: Settings, images: int | None = None) -> dict[str, Any]:
    """`images`: those a step reads (default the batch)."""
    intervals = [b - a for a, b in zip(stamps, stamps[1:])]
    if len(intervals) < s.total_steps:
        raise RuntimeError(f"recorded {len(intervals)} step intervals, expected {s.total_steps}")
    timed = intervals[s.warmup:s.total_steps]
    blocks = [timed[r * s.steps:(r + 1) * s.steps] for r in range(s.repeats)]
    per_repeat = [sum(b) / len(b) for b in blocks]
    step = statistics.median(per_repeat)
    images_per_s = (s.batch_size if images is None else images) / step
    return {
        "step_ms": step * 1e3,
        "step_ms_repeats": [x * 1e3 for x in per_repeat],
        "step_ms_min": min(timed) * 1e3,
        "step_ms_all": [x * 1e3 for x in intervals],  # warm-up included, for tracing
        "images_per_s": images_per_s,
    }


def measure(method: str, impl: str, settings: dict[str, Any]) -> dict[str, Any]:
    """One (method, impl) measurement; meant to run in a fresh process (peak memory is per process)."""
    quiet()
    import torch

    s = Settings(**{**settings, "methods": tuple(settings["methods"])})
    device = torch.device(s.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    run = run_fkt if impl == "fkt" else run_bare
    raw = run(method, s, device)
    per_step = images_per_step(method, s)  # pool + labelled for a joint row, in both implementations
    out = summarize(raw["stamps"], s, per_step)
    spec = METHODS[method]
    images_seen = raw["steps_run"] * per_step
    out.update({
        "method": method,
        "impl": impl,
        "images_per_step": per_step,
        # images through the backbone per image read, as the step counted them (fkt.step)
        "passes_per_image": raw["image_passes"] / images_seen if images_seen else math.nan,
        "passes_per_step": raw["image_passes"] / raw["steps_run"] if raw["steps_run"] else math.nan,
        "ssl": s.ssl if spec.ssl else None,
        # images through a momentum teacher per image read (forward only), where the objective has one
        "teacher_forwards_per_image_counted": raw["teacher_forwards"] / images_seen if images_seen else math.nan,
        "first_loss": raw["losses"][0] if raw["losses"] else math.nan,
        "losses": raw["losses"],  # every step's total loss, warm-up included
        "steps_run": raw["steps_run"],
        "channels_last": raw["channels_last"],
        "threads": torch.get_num_threads(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    })
    out["passes_per_s"] = out["images_per_s"] * out["passes_per_image"]
    out["teacher_forwards_per_s"] = out["images_per_s"] * out["teacher_forwards_per_image_counted"]
    out["peak_mb"] = out["peak_gpu_mb"] if out["peak_gpu_mb"] is not None else out["peak_rss_mb"]
    out["peak_memory_kind"] = "cuda max_memory_allocated" if device.type == "cuda" else "process max RSS"
    return out


def measure_in_fresh_process(method: str, impl: str, s: Settings) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(measure, method, impl, asdict(s)).result()


# --------------------------------------------------------------------------- the whole bench

def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(s: Settings) -> dict[str, Any]:
    import kornia
    import lightly
    import pytorch_lightning as pl
    import torch

    device = torch.device(s.device)
    env = {
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
        "kornia": kornia.__version__,
        "lightly": lightly.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": s.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": torch.get_num_threads(),
        "precision": s.precision,
        "batch_size": s.batch_size,
        "labelled_batch_size": labelled_batch(s),  # the joint (pseudo-label) rows' labelled images a step
        "image_size": s.image_size,
        "backbone": s.backbone,
        "stem": s.stem,
        "compile": s.compile,
        "compile_mode": s.compile_mode,
        "steps": s.steps,
        "warmup": s.warmup,
        "repeats": s.repeats,
        "seed": s.seed,
        "num_classes": s.num_classes,
        "ssl": s.ssl,
        "data": f"{DISTINCT_BATCHES} batches of random uint8 images on the device, cycled",
    }
    from fkt.config import ModelConfig

    env["channels_last"] = ModelConfig().channels_last
    return env


def ratios(results: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(r["method"], r["impl"]): r for r in results}
    pairs = [m for m in METHODS if (m, "fkt") in by and (m, "bare") in by]
    fkt_over_bare = {m: by[(m, "fkt")]["images_per_s"] / by[(m, "bare")]["images_per_s"] for m in pairs}
    # the same on each one's fastest timed step: less sensitive to other processes' load
    best_step = {m: by[(m, "bare")]["step_ms_min"] / by[(m, "fkt")]["step_ms_min"] for m in pairs}
    view_over_simclr = {impl: by[("functional-view", impl)]["step_ms"] / by[("simclr", impl)]["step_ms"]
                        for impl in IMPLS if ("functional-view", impl) in by and ("simclr", impl) in by}
    return {"fkt_over_bare": fkt_over_bare, "fkt_over_bare_fastest_step": best_step,
            "view_over_simclr_step": view_over_simclr,
            "view_over_simclr_target": 1.05}


def run_all(s: Settings, progress: bool = True, out: Path | None = None) -> dict[str, Any]:
    """Every (method, impl), each in a fresh process; with `out`, the JSON is rewritten after each
    measurement (`"complete": false` until the last), so an interrupted bench leaves what it measured."""
    env = environment(s)
    load_before = os.getloadavg()
    started = time.time()
    results: list[dict[str, Any]] = []

    def report(complete: bool) -> dict[str, Any]:
        return {"env": env, "complete": complete,
                "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
                "wall_seconds": time.time() - started, "results": results, "ratios": ratios(results)}

    for method in s.methods:
        for impl in IMPLS:
            if progress:
                print(f"[fkt bench] {method} / {impl} ...", file=sys.stderr, flush=True)
            results.append(measure_in_fresh_process(method, impl, s))
            if out is not None:
                write_json(out, report(False))
    final = report(True)
    if out is not None:
        write_json(out, final)
    return final


def write_json(path: Path, data: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def format_table(report: dict[str, Any]) -> str:
    env = report["env"]
    fkt_over_bare = report["ratios"]["fkt_over_bare"]
    compiled = f", compiled ({env.get('compile_mode', 'default')})" if env["compile"] else ""
    lines = [
        f"fkt bench: {env['backbone']} ({env['stem']} stem), {env['image_size']} px, batch {env['batch_size']}, "
        f"{env['precision']}{compiled}, on {env['device']} ({env['device_name']}), "
        f"{env['threads']} threads; median over {env['repeats']} repeats of {env['steps']} steps "
        f"after {env['warmup']} warm-up",
        f"SSL objective: {env.get('ssl', 'simclr')} (the simclr and functional rows' SSL term; "
        "'simclr' is the SSL pretraining step)",
    ]
    joint = list(dict.fromkeys(r["method"] for r in report["results"]
                               if r.get("images_per_step", env["batch_size"]) != env["batch_size"]))
    if joint:  # images/s counts every image a step reads
        lines.append(f"{', '.join(joint)}: joint batches of {env['batch_size']} pool + "
                     f"{env.get('labelled_batch_size')} labelled images a step")
    lines.append("")
    # a column for a momentum teacher's forwards (no backward), only where one ran
    teacher = any(r.get("teacher_forwards_per_s") for r in report["results"])
    lines += ["| method | impl | step ms | images/s | passes/s | " + ("teacher fwd/s | " if teacher else "")
              + "peak MB | fkt/bare |", "|---|---|---|---|---|---|---|" + ("---|" if teacher else "")]
    for r in report["results"]:
        ratio = f"{fkt_over_bare[r['method']]:.3f}" if r["impl"] == "fkt" and r["method"] in fkt_over_bare else ""
        extra = f"{r.get('teacher_forwards_per_s') or 0:,.0f} | " if teacher else ""
        lines.append(f"| {r['method']} | {r['impl']} | {r['step_ms']:.1f} | {r['images_per_s']:,.0f} | "
                     f"{r['passes_per_s']:,.0f} | {extra}{r['peak_mb']:,.0f} | {ratio} |")
    best = report["ratios"].get("fkt_over_bare_fastest_step", {})
    if best:
        lines += ["", "fkt/bare on each one's fastest step (less sensitive to other load): "
                  + ", ".join(f"{m} {v:.3f}" for m, v in best.items())]
    view = report["ratios"]["view_over_simclr_step"]
    if view:
        shown = ", ".join(f"{impl} {v:.3f}x" for impl, v in view.items())
        verdict = "within" if view.get("fkt", 0) <= report["ratios"]["view_over_simclr_target"] else "above"
        lines += ["", f"functional-view / simclr step time: {shown} ({verdict} the 1.05x target for fkt)"]
    load = report["load_average"]
    lines.append(f"load average (1/5/15 min) before {fmt_load(load['before'])}, after {fmt_load(load['after'])}; "
                 f"peak MB is {report['results'][0]['peak_memory_kind']}")
    return "\n".join(lines)


def fmt_load(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def extrapolate_seconds(report: dict[str, Any], method: str = "functional-clean", impl: str = "fkt",
                        epochs: int = 100, images: int = 50_000) -> float:
    """Training wall time for `epochs` over `images` at the measured steady-state throughput
    (training steps only: no validation, data loading beyond the in-memory fetch, or start-up)."""
    row = next((r for r in report["results"] if r["method"] == method and r["impl"] == impl), None)
    if row is None:
        raise KeyError(f"no {method}/{impl} measurement in the report")
    return epochs * images / row["images_per_s"]


def run_bench(args: argparse.Namespace) -> int:
    s = settings_from_args(args)
    report = run_all(s, out=args.out)
    print(format_table(report))
    if args.out is not None:
        print(f"[fkt bench] wrote {args.out}", file=sys.stderr)
    return 0


__all__ = ["METHODS", "Settings", "extrapolate_seconds", "format_table", "measure", "run_all", "run_bench"]
