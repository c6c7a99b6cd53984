"""Data-parallel training (Lightning DDP) is the same computation as one process on the global batch.

Two checks, both on CPU processes talking over gloo on the loopback interface:

* `test_one_ddp_step_equals_one_process_on_the_global_batch`: one functional step on 2 ranks
  (the Functional module, DistributedDataParallel, synchronised batch norm, NT-Xent with negatives
  gathered over ranks) gives the loss terms and the gradients of one process on the concatenated
  batch, both through a bare DistributedDataParallel wrapper and through Trainer.fit (whose
  logged train/* terms must be the global batch's too); with per-rank batch norm, or without
  gathering the negatives, it does not.
* `test_two_process_cli_run_writes_one_consistent_run`: `fkt train --devices 2 --strategy ddp`
  (Lightning's subprocess launcher re-runs the command for rank 1) leaves one run directory with
  one metrics.json whose compute count and test metrics are those of the whole run; each rank
  validated only its shard of an odd-sized validation set, and the logged val/acc and val/loss
  are still those of the whole set.

Beside them, in one process, `test_the_trainers_validation_loader_is_sharded_over_the_ranks_and_no_other_loader_is`
checks the shards the data module hands each rank for any world size.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import make_fashion_mnist
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset, TensorDataset

from fkt.cli import main
from fkt.config import build_config
from fkt.data.module import FKTDataModule
from fkt.data.transforms import Normalize, to_float
from fkt.evaluate import checkpoint_data, evaluate_checkpoint
from fkt.methods import load_module
from fkt.methods import MODULES

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")

WORLD = 2
PER_RANK = 4  # images per rank; the single process sees WORLD * PER_RANK
SIZE = 16
NUM_CLASSES = 3
SEED = 0
LAMBDA_CE = 0.5  # not 1, so that the weighting of the total is part of what is compared
TIMEOUT_S = 180


# --------------------------------------------------------------------------- helpers

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_env(port: int) -> dict[str, str]:
    """Rendezvous on 127.0.0.1, and gloo's own connections on the loopback interface too."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


@contextlib.contextmanager
def one_thread():
    """torch on one thread here, as in each rank: on a small shared CPU two OpenMP threads that
    wait for each other make these tiny steps ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiny_config() -> dict:
    return build_config({
        "method": {"name": "functional", "lambda_ce": LAMBDA_CE, "temperature": 0.5, "classifier_input": "clean"},
        "data": {"image_size": SIZE, "batch_size": PER_RANK},
        "model": {"backbone": "resnet18", "stem": "imagenet", "proj_hidden_dim": 32, "proj_output_dim": 16},
        "trainer": {"accelerator": "cpu", "progress_bar": False, "epochs": 1},
        "seed": SEED,
    }).to_dict()


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (WORLD * PER_RANK, 3, SIZE, SIZE), dtype=torch.uint8, generator=gen)
    return images, torch.arange(WORLD * PER_RANK) % NUM_CLASSES


class FixedViews(nn.Module):
    """A deterministic stand-in for the random SimCLR views: the first view of each step is the
    horizontal flip, the second the image at 70% brightness, both normalised like the real ones.
    Per image, so a rank's views are exactly the rows of the single process's views."""

    def __init__(self) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.calls = 0

    @torch.no_grad()
    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = to_float(images)
        x = x.flip(-1) if self.calls % 2 == 0 else x * 0.7
        self.calls += 1
        return self.normalize(x)


def build_method():
    """The Functional module as fkt builds it, with the same weights wherever it is built.

    In float64: the comparison is of what is computed, and in float32 the rounding differences
    of a different reduction order (1e-7) flip the odd ReLU whose input is within 1e-7 of zero,
    which moves the gradients below that layer by 1e-3 of their scale (seen with a small stem).
    The images stay uint8 and every view is normalised against float64 buffers.
    """
    torch.manual_seed(SEED)
    method = MODULES["functional"](config=tiny_config(), num_classes=NUM_CLASSES)
    method.views = method.context.simclr = FixedViews()  # a child, so that .double() casts it too
    return method.double().train()


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) whose backward is all_reduce(SUM) of the gradient, as SyncBatchNorm's is."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """torch.nn.SyncBatchNorm's computation for CPU tensors. torch has its kernels only for GPUs
    (`batch_norm_stats` & co.), and DistributedDataParallel refuses to wrap a CPU module holding
    an nn.SyncBatchNorm ("SyncBatchNorm layers only work with GPU modules"), so on CPU the layers
    `convert_sync_batchnorm` made are switched to this class (same parameters and buffers).

    Training mode: mean and biased variance over the images of every rank (differentiable
    all-reduces, so each rank's gradient reaches the statistics the other ranks used, as in
    SyncBatchNorm's backward), the running statistics updated with the unbiased global variance.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = _SumOverRanks.apply(x.new_tensor([x.numel() / x.shape[1]]))
        mean = _SumOverRanks.apply(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = _SumOverRanks.apply(centred.square().sum(dims)) / count
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * count / (count - 1), self.momentum)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        return y * self.weight.view(shape) + self.bias.view(shape)


class TrainingStep(nn.Module):
    """What Lightning's DDP wrapper does with training_step: the method's loss terms, weighted."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, images: torch.Tensor, targets: torch.Tensor):
        terms = self.method.losses(self.method.context, (images, targets))
        return self.method.combine(terms), {k: v.detach() for k, v in terms.items()}


def step_record(method, terms: dict[str, torch.Tensor], total: torch.Tensor) -> dict:
    return {
        "terms": {k: float(v.detach()) for k, v in terms.items()},
        "total": float(total.detach()),
        "grads": {name: p.grad.detach().clone() for name, p in method.named_parameters() if p.grad is not None},
        "buffers": {name: b.detach().clone() for name, b in method.named_buffers() if "running" in name},
        "image_passes": method.image_passes,
    }


def convert_sync_batchnorm(method: nn.Module) -> None:
    nn.SyncBatchNorm.convert_sync_batchnorm(method)  # what Trainer(sync_batchnorm=True) does
    for m in method.modules():
        if type(m) is nn.SyncBatchNorm:
            m.__class__ = CPUSyncBatchNorm  # torch's kernels are GPU-only
    assert not any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in method.modules())


# The hand-wrapped variants each rank runs: (batch norm, negatives gathered over ranks).
VARIANTS = {"sync": ("sync", True), "plain-bn": ("plain", True), "local-negatives": ("sync", False)}


class StepRecorder(pl.Callback):
    """In a real Trainer.fit: the gradients DDP left, the logged metrics and the step's own loss."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        self.buffers = {n: b.detach().clone() for n, b in pl_module.named_buffers() if "running" in n}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self.record = {"terms": {k: logged[f"train/{k}"] for k in ("ssl", "ce")}, "total": logged["train/loss"],
                       "local_total": float(outputs["loss"]), "grads": self.grads, "buffers": self.buffers,
                       "image_passes": pl_module.image_passes, "world_size": pl_module.context.world_size,
                       "gathers": pl_module.ssl.loss.gather_distributed}


def lightning_step(rank: int, images: torch.Tensor, targets: torch.Tensor) -> dict:
    """One step of Trainer.fit with strategy="ddp" on this rank's shard, in the process group made
    here (Lightning joins it: LOCAL_RANK is set, so it launches nothing). The module's own setup(),
    training_step and logging run; only the views and the batch-norm kernel are the test's."""
    os.environ.update({"LOCAL_RANK": str(rank), "NODE_RANK": "0", "RANK": str(rank), "WORLD_SIZE": str(WORLD)})
    method = build_method()
    convert_sync_batchnorm(method)
    recorder = StepRecorder()
    trainer = pl.Trainer(accelerator="cpu", devices=WORLD, strategy="ddp", precision="64-true", max_steps=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=[recorder])
    loader = DataLoader(TensorDataset(images, targets), batch_size=PER_RANK)
    trainer.fit(method, train_dataloaders=loader)
    return recorder.record


def ddp_worker(rank: int, port: int, out: str) -> None:
    """One rank: each variant's single training step on rows [rank*B:(rank+1)*B]."""
    os.environ.update(loopback_env(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        images, targets = global_batch()
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        records = {}
        for name, (batchnorm, gather) in VARIANTS.items():
            method = build_method()
            method.context.world_size = WORLD  # what Method.setup sets from trainer.world_size ...
            method.ssl.distributed(WORLD if gather else 1)  # ... and this
            if batchnorm == "sync":
                convert_sync_batchnorm(method)
            model = nn.parallel.DistributedDataParallel(TrainingStep(method))
            total, terms = model(images[rows], targets[rows])
            total.backward()  # DDP all-reduces (averages) the gradients during backward
            records[name] = step_record(method, terms, total)
        records["lightning"] = lightning_step(rank, images[rows], targets[rows])
        torch.save(records, Path(out) / f"rank{rank}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(out: Path) -> list[dict]:
    # fork where there is one: the ranks inherit the imports (a spawned rank spends 10-20 s on them)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    context = mp.start_processes(ddp_worker, args=(free_port(), str(out)), nprocs=WORLD, join=False,
                                 start_method=method)
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"the {WORLD} DDP ranks did not finish in {TIMEOUT_S} s (a collective hangs?)")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def single_process_step() -> dict:
    method = build_method()  # world_size 1, plain NT-Xent, plain batch norm on the whole batch
    images, targets = global_batch()
    terms = method.losses(method.context, (images, targets))
    total = method.combine(terms)
    total.backward()
    return step_record(method, terms, total)


def worst_gap(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], prefix: str = "") -> tuple[float, str]:
    """Largest |got - want| of any tensor, relative to the largest |want| of that tensor."""
    gaps = [((got[k] - v).abs().max() / v.abs().max().clamp_min(1e-12)).item() for k, v in want.items()
            if k.startswith(prefix)]
    names = [k for k in want if k.startswith(prefix)]
    i = max(range(len(gaps)), key=gaps.__getitem__)
    return gaps[i], names[i]


# --------------------------------------------------------------------------- one step

@pytest.mark.slow  # trains in the rank processes, where the static rule cannot follow
def test_one_ddp_step_equals_one_process_on_the_global_batch(tmp_path):
    """Why a DDP step must equal one process on the concatenated batch:

    * The loss terms. Cross-entropy is a mean over images; the ranks hold equal shards, so the
      mean of the ranks' means is the global mean. NT-Xent with `gather_distributed` (lightly's
      GatherLayer) scores each rank's 2B embeddings against the 2WB embeddings of all ranks, with
      the positives offset by rank*B, so again the mean over ranks is the single-process loss.
    * The gradients. DDP all-reduces and divides by W, so every rank holds the gradient of
      mean_r(L_r) = L. The part of L_r that depends on another rank's images (its embeddings
      gathered as negatives, its images in the batch-norm statistics) reaches that rank through
      the backward of the collectives: GatherLayer all-reduces the gradient of the gathered
      embeddings, SyncBatchNorm all-reduces the gradient of the global mean and variance.
    * Batch norm. Every forward pass (two views, then the clean images) normalises with the
      statistics of all ranks' images of that pass, which is what one process computes on the
      concatenated batch. The running statistics follow the same global statistics.

    What breaks it, and is checked to break it: plain BatchNorm (no `--sync-batchnorm`) normalises
    each rank's images with that rank's own statistics, so the features, both losses and every
    gradient differ; NT-Xent without gathering scores each rank's images only against that rank's
    own 2B-2 negatives, so the SSL term (and its gradient) differ, while the CE term does not.

    The same step is also run through `Trainer.fit(strategy="ddp")`, so that the module's own
    `setup()` (gathering loss, world size for the pass count), `training_step` and Lightning's
    DDP wrapper are what is checked; its logged train/ssl, train/ce and train/loss must be the
    global batch's on every rank (the mean over the ranks, `sync_dist`), not rank 0's shard's.

    torch's SyncBatchNorm kernels are GPU-only, so on CPU the converted layers run
    `CPUSyncBatchNorm`, the same computation; everything else (conversion, DDP, GatherLayer,
    the module's `losses`) is fkt's and torch's own code.
    """
    ranks = run_ranks(tmp_path)
    with one_thread():
        want = single_process_step()
    tol = 1e-9  # float64 (see build_method)

    sync = [r["sync"] for r in ranks]
    for term, value in want["terms"].items():
        mean = sum(r["terms"][term] for r in sync) / WORLD
        assert mean == pytest.approx(value, rel=tol, abs=tol), f"{term}: ranks average {mean}, one process {value}"
    assert sum(r["total"] for r in sync) / WORLD == pytest.approx(want["total"], rel=tol)
    # Every image through the backbone counted once, for all ranks together, on every rank.
    assert [r["image_passes"] for r in sync] == [want["image_passes"]] * WORLD == [3 * WORLD * PER_RANK] * WORLD

    assert set(sync[0]["grads"]) == set(want["grads"])
    assert any(k.startswith("backbone.") for k in want["grads"])
    for r in sync:
        # after DDP's all-reduce every rank holds the same gradient, the single process's
        gap, name = worst_gap(r["grads"], want["grads"], "backbone.")
        assert gap < tol, f"backbone gradient {name} is off by {gap:.2e} of its scale"
        gap, name = worst_gap(r["grads"], want["grads"])
        assert gap < tol, f"gradient {name} is off by {gap:.2e} of its scale"
        gap, name = worst_gap(r["buffers"], want["buffers"])
        assert gap < tol, f"batch-norm buffer {name} is off by {gap:.2e}"

    # The same step inside Trainer.fit(strategy="ddp"): Method.setup() made the loss gather the
    # negatives and count passes for both ranks; the logged terms are those of the global batch.
    for r in ranks:
        real = r["lightning"]
        assert (real["world_size"], real["gathers"], real["image_passes"]) == (WORLD, True, want["image_passes"])
        gap, name = worst_gap(real["grads"], want["grads"])
        assert gap < tol, f"Trainer.fit: gradient {name} is off by {gap:.2e} of its scale"
        assert worst_gap(real["buffers"], want["buffers"])[0] < tol
        for term, value in want["terms"].items():
            assert real["terms"][term] == pytest.approx(value, rel=tol), \
                f"logged train/{term} is {real['terms'][term]} on rank {ranks.index(r)}, the global batch's is {value}"
        assert real["total"] == pytest.approx(want["total"], rel=tol)
    assert sum(r["lightning"]["local_total"] for r in ranks) / WORLD == pytest.approx(want["total"], rel=tol)

    # The comparison is sharp enough to see each ingredient missing.
    plain = ranks[0]["plain-bn"]
    assert worst_gap(plain["grads"], want["grads"], "backbone.")[0] > 1e-3
    assert sum(r["plain-bn"]["terms"]["ce"] for r in ranks) / WORLD != pytest.approx(want["terms"]["ce"], rel=1e-3)
    local = [r["local-negatives"] for r in ranks]
    assert sum(r["terms"]["ssl"] for r in local) / WORLD != pytest.approx(want["terms"]["ssl"], rel=1e-3)
    assert sum(r["terms"]["ce"] for r in local) / WORLD == pytest.approx(want["terms"]["ce"], rel=tol)
    assert worst_gap(local[0]["grads"], want["grads"], "backbone.")[0] > 1e-3


# --------------------------------------------------------------------------- the validation shards

def test_the_trainers_validation_loader_is_sharded_over_the_ranks_and_no_other_loader_is(tmp_path):
    """Rank r of w validates images r, r+w, ... (no padding, no duplicates); with fewer images than
    ranks, every rank validates them all. `loader("val")` without `shard`, which `fkt train`
    evaluates the best checkpoint with after fit (the DDP trainer still attached), and the test
    loader, see every image."""
    generated = make_fashion_mnist(tmp_path / "data", num_classes=5, train_per_class=3, test_per_class=1, gz=False)
    config = build_config({"data": {"dataset": "fashion-mnist", "root": str(generated.root), "image_size": 16,
                                    "batch_size": 2, "eval_batch_size": 2, "val_fraction": 0.2, "num_workers": 0}})
    data = FKTDataModule(config)
    data.setup()
    val, n = data.sets["val"], len(data.sets["val"])
    assert n == 5

    def indices(loader: DataLoader) -> list[int]:
        dataset = loader.dataset
        if isinstance(dataset, Subset):
            assert dataset.dataset is val
            return list(dataset.indices)
        return list(range(len(dataset)))

    assert indices(data.val_dataloader()) == list(range(n))  # no trainer: one process
    for world in (1, 2, 3, 5):
        shards = []
        for rank in range(world):
            data.trainer = SimpleNamespace(global_rank=rank, world_size=world)
            shards.append(indices(data.val_dataloader()))
            assert indices(data.loader("val")) == list(range(n))
            assert len(data.loader("test").dataset) == len(data.sets["test"]) == 5
        assert shards == [list(range(rank, n, world)) for rank in range(world)]
    data.trainer = SimpleNamespace(global_rank=1, world_size=2)
    images = torch.cat([x for x, _ in data.val_dataloader()])
    assert torch.equal(images, torch.stack([val[i][0] for i in (1, 3)]))
    for rank in (0, 5):  # 6 ranks, 5 images: no empty shard, every rank validates all 5
        data.trainer = SimpleNamespace(global_rank=rank, world_size=6)
        assert indices(data.val_dataloader()) == list(range(n))


# --------------------------------------------------------------------------- the CLI on 2 processes

def train_args(data_root: Path, out: Path, batch_size: int, devices: int, strategy: str) -> list[str]:
    # eval batches of 7: the validation shards of 8 and 7 images take 2 batches and 1, so the ranks
    # also run different numbers of validation steps (only the first forward syncs DDP's buffers)
    return ["train", "--method", "functional", "--dataset", "fashion-mnist", "--data-root", str(data_root),
            "--image-size", "16", "--batch-size", str(batch_size), "--epochs", "1", "--accelerator", "cpu",
            "--devices", str(devices), "--strategy", strategy, "--num-workers", "0", "--no-progress",
            "--set", "data.val_fraction=0.2", "--set", "data.eval_batch_size=7", "--set", "model.proj_hidden_dim=64",
            "--out", str(out)]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def fingerprint(image: torch.Tensor) -> str:
    """One uint8 image (3, H, W), as the validation loader gives it, by its bytes (as RECORDING_CLI's)."""
    return image.contiguous().numpy().tobytes().hex()


# `fkt train` itself, with each rank's validation images recorded in <this folder>/seen/rank<r>.json:
# the test's window on which images each rank evaluated. Lightning's subprocess launcher starts
# rank 1 with the same script and arguments.
RECORDING_CLI = """
import json, sys
from pathlib import Path
from fkt.cli import main
from fkt.methods.base import Method

seen = []
validation_step, epoch_end = Method.validation_step, Method.on_validation_epoch_end

def recording_step(self, batch, batch_idx):
    seen.extend(image.contiguous().numpy().tobytes().hex() for image in batch[0].cpu())
    return validation_step(self, batch, batch_idx)

def recording_epoch_end(self):
    # here, before the metrics are gathered: rank 0 cannot finish the run before rank 1 has written
    folder = Path(__file__).parent / "seen"
    folder.mkdir(exist_ok=True)
    (folder / f"rank{self.global_rank}.json").write_text(json.dumps(seen))
    return epoch_end(self)

Method.validation_step, Method.on_validation_epoch_end = recording_step, recording_epoch_end
sys.exit(main(sys.argv[1:]))
"""


def whole_set_outputs(checkpoint: Path) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The validation set of a run (its saved split), in order: each image's fingerprint, and the
    checkpoint's logits and the labels, in one process."""
    module = load_module(checkpoint)  # on the CPU, in eval mode
    val = checkpoint_data(module, checkpoint).sets["val"]
    images = torch.stack([val[i][0] for i in range(len(val))])
    targets = torch.tensor([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        logits = module(module.normalize(images))
    return [fingerprint(image) for image in images], logits, targets


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="--devices 2 on CPU needs 2 cores")
def test_two_process_cli_run_writes_one_consistent_run(tmp_path):
    # 17 a class: 85 images, 3 a class (15) to validate on, 70 to train on: 35 a rank, 4 batches of 8
    # and 3 left out. The 15 validation images are sharded 8 and 7 (an odd set: shards of two sizes).
    data = make_fashion_mnist(tmp_path / "data", num_classes=5, train_per_class=17, test_per_class=4, gz=False)
    data_files = files_under(data.root)
    out, cwd = tmp_path / "runs" / "ddp", tmp_path / "cwd"
    cwd.mkdir()
    script = tmp_path / "cli" / "fkt_recording.py"
    script.parent.mkdir()
    script.write_text(RECORDING_CLI)
    env = {**os.environ, **loopback_env(free_port()), "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(name, None)
    # Lightning's subprocess launcher runs this same command again as rank 1
    result = subprocess.run([sys.executable, str(script), *train_args(data.root, out, 8, WORLD, "ddp")],
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]

    # One run directory, written once: rank 1 trains but writes nothing of its own.
    assert [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("metrics.json")] == ["runs/ddp/metrics.json"]
    for name in ("config.yaml", "split.json"):
        assert len(list(tmp_path.rglob(name))) == 1, name
    assert files_under(cwd) == [] and not any(tmp_path.rglob("lightning_logs")), "a stray lightning_logs/"
    assert files_under(data.root) == data_files
    written = files_under(out)
    assert [f for f in written if f.startswith("checkpoints/")] == ["checkpoints/best.ckpt", "checkpoints/last.ckpt"]
    assert [f for f in written if f.startswith("logs/")] == ["logs/train/hparams.yaml", "logs/train/metrics.csv"]
    assert len([f for f in written if f.startswith("tb/") and "events" in f]) == 1
    assert not [f for f in written if f.endswith(".tmp")]
    assert log.count("wrote ") == 1, "the test evaluation ran on more than one rank"
    assert "sync_dist" not in log, "an epoch-level metric logged without reducing it over the ranks"

    metrics = json.loads((out / "metrics.json").read_text())
    split = json.loads((out / "split.json").read_text())["indices"]
    assert metrics["test"]["n"] == len(data.test_labels) == 20  # the whole test set, on rank 0 alone
    assert metrics["val"]["n"] == len(split["val"]) == 15  # the whole validation set, on rank 0 alone
    # EpochSampler: each rank takes len(train) // 2 indices; batches of 8 drop the rest; 3 passes
    # per image (two views and the clean classifier input); counted for both ranks together.
    steps = (len(split["train"]) // WORLD) // 8
    assert steps >= 2 and len(split["train"]) % (WORLD * 8) != 0
    expected = WORLD * steps * 8 * 3
    assert metrics["compute"]["image_passes"] == metrics["compute"]["stages"]["train"]["image_passes"] == expected

    # Validation was sharded: rank r evaluated images r, r+2, r+4, ... of the validation set and no
    # other (8 and 7 images), each image on one rank only.
    best = out / "checkpoints" / "best.ckpt"
    val_images, logits, targets = whole_set_outputs(best)
    assert len(set(val_images)) == len(val_images) == 15
    seen = [json.loads((script.parent / "seen" / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [len(s) for s in seen] == [8, 7]
    assert seen == [val_images[r::WORLD] for r in range(WORLD)]

    # The metrics best.ckpt was chosen on, gathered over the ranks, are those of the whole
    # validation set: val/acc (metrics.json's, from one process), and val/loss, the mean
    # cross-entropy over the 15 images, not the mean of the two shards' means.
    with open(out / "logs" / "train" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val/acc")]
    assert len(rows) == 1
    assert float(rows[0]["val/acc"]) == pytest.approx(metrics["val"]["accuracy"], abs=1e-6)
    assert float(rows[0]["val/acc"]) == pytest.approx((logits.argmax(1) == targets).double().mean().item(), abs=1e-6)
    want = F.cross_entropy(logits.double(), targets).item()
    assert float(rows[0]["val/loss"]) == pytest.approx(want, rel=1e-5)
    # ... which the mean of the shards' means is not (1407 against 1357 here: the shards differ in
    # size), nor what `self.log(loss, sync_dist=True, batch_size=n)` logs (1454: Lightning averages
    # the integer image counts over the ranks, (8 + 7) // 2 = 7, and divides the averaged sums by it).
    shard_means = [F.cross_entropy(logits[r::WORLD].double(), targets[r::WORLD]).item() for r in range(WORLD)]
    assert sum(shard_means) / WORLD != pytest.approx(want, rel=1e-3)
    assert float(rows[0]["val/image_passes"]) == expected
    again = evaluate_checkpoint(best, None, None, None)["test"]
    assert again["accuracy"] == metrics["test"]["accuracy"]
    assert again["confusion_matrix"] == metrics["test"]["confusion_matrix"]

    # One process (in this one, without DDP) on the same global batch makes as many image passes.
    with one_thread():
        assert main(train_args(data.root, tmp_path / "runs" / "one", 16, 1, "auto")) == 0
    one = json.loads((tmp_path / "runs" / "one" / "metrics.json").read_text())
    assert json.loads((tmp_path / "runs" / "one" / "split.json").read_text())["indices"] == split
    assert one["compute"]["image_passes"] == expected
