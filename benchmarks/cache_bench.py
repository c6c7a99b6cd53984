"""The image cache against decoding files at every access: APTOS-size PNGs (3216x2136) and
Intel-size JPEGs (150x150), generated in an imagefolder layout.

    python benchmarks/cache_bench.py [--pngs 48] [--jpegs 480] [--image-size 224] [--batch-size 16]
                                     [--backbone resnet18] [--accelerator cpu] [--precision 32-true]
                                     [--dir DIR] [--no-train] [--cached-only]

prints the machine, the cache build (seconds, images/s, images/s per core), one epoch of data loading
(a DataLoader over the training split, default workers) with and without the cache, and one
end-to-end `fkt train` epoch (supervised) with and without `--no-cache`, with the ratios, and the
share of the cached training epoch that loading takes (the cache is read in the main process, so
loading and the step do not overlap: loading epoch / training seconds is the time spent waiting
for data). The cached loading and training read a cache built beforehand (a later epoch, run or
grid cell); a first run adds the build time. `--cached-only` skips the uncached runs (on a GPU
machine, where only the cached figures are wanted: scripts/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

APTOS = (3216, 2136)
INTEL = (150, 150)


def machine() -> str:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{model}, {len(os.sched_getaffinity(0))} cores usable ({os.cpu_count()} online)"


def fundus(seed: int, size: tuple[int, int] = APTOS) -> Image.Image:
    """A bright disc on black with a radial gradient, blotches and fine noise: compresses like a real
    fundus photograph, not like pure noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.ogrid[:h, :w]
    r = np.hypot((x - w / 2) / (0.46 * w), (y - h / 2) / (0.48 * h)).astype(np.float32)
    tint = np.array([200, 90, 40], np.float32) * rng.uniform(0.8, 1.1, 3).astype(np.float32)
    glow = np.clip(1.1 - 0.7 * r, 0, 1)[..., None] * tint
    for _ in range(12):  # vessels and spots as soft blobs
        cx, cy, s = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h, rng.uniform(20, 200)
        glow *= 1 - 0.3 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))[..., None].astype(np.float32)
    glow += rng.normal(0, 3, (h, w, 1)).astype(np.float32)
    glow[r > 1] = 0
    return Image.fromarray(np.clip(glow, 0, 255).astype(np.uint8))


def scene(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: INTEL[1], : INTEL[0]].astype(np.float32)
    base = 128 + 60 * np.sin(x / rng.uniform(5, 20) + rng.uniform(0, 6)) * np.cos(y / rng.uniform(5, 20))
    rgb = base[..., None] * rng.uniform(0.5, 1.2, 3) + rng.normal(0, 8, (*base.shape, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def generate(root: Path, pngs: int, jpegs: int) -> None:
    """`root/train/<class>/`: PNGs and JPEGs dealt over two classes, written in threads."""
    def write(i: int) -> None:
        folder = root / "train" / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        if i < pngs:
            fundus(i).save(folder / f"fundus{i:05d}.png")
        else:
            scene(i).save(folder / f"scene{i:05d}.jpg", quality=90)

    start = time.perf_counter()
    with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        list(pool.map(write, range(pngs + jpegs)))
    print(f"generated {pngs} PNGs {APTOS[0]}x{APTOS[1]} and {jpegs} JPEGs {INTEL[0]}x{INTEL[1]} in {root} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)


def data_config(root: Path, args: argparse.Namespace, cache: bool):
    from fkt.config import build_config

    return build_config({"data": {"dataset": "imagefolder", "root": str(root), "image_size": args.image_size,
                                  "batch_size": args.batch_size, "cache": cache}})


def build_seconds(root: Path, args: argparse.Namespace) -> tuple[float, int]:
    from fkt.data import load_dataset
    from fkt.data.cache import cache_folder, cached_pixels

    train = load_dataset("imagefolder", root).train
    start = time.perf_counter()
    cached_pixels(train, args.image_size, cache_folder(None))
    return time.perf_counter() - start, len(train)


def resident_mb() -> dict[str, float]:
    """This process's resident memory by kind (Linux): anonymous (its own copies) and file-backed
    (pages of mapped files, the cache's among them, which the kernel can drop and read again)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    except OSError:
        return {}
    return {name: int(fields[name].split()[0]) / 1024 for name in ("RssAnon", "RssFile") if name in fields}


def loading_epoch(root: Path, args: argparse.Namespace, cache: bool) -> tuple[float, int, int, dict]:
    """Seconds for one epoch of the training loader, its images, its workers, and how the resident
    memory grew over the epoch."""
    from fkt.data.module import FKTDataModule

    module = FKTDataModule(data_config(root, args, cache))
    module.setup()
    loader = module.train_loader("labelled")
    before = resident_mb()
    start = time.perf_counter()
    images = sum(len(x) for x, _ in loader)
    seconds, after = time.perf_counter() - start, resident_mb()
    return seconds, images, loader.num_workers, {k: after[k] - before[k] for k in after}


def train_epoch(root: Path, out: Path, args: argparse.Namespace, cache: bool) -> tuple[float, float, int]:
    """Wall seconds of `fkt train` (one epoch, test evaluation included), its own train_seconds and
    the images it trained on."""
    command = [sys.executable, "-m", "fkt", "train", "--method", "supervised", "--dataset", "imagefolder",
               "--data-root", str(root), "--epochs", "1", "--image-size", str(args.image_size), "--backbone",
               args.backbone, "--batch-size", str(args.batch_size), "--accelerator", args.accelerator,
               "--precision", args.precision, "--devices", "1", "--out", str(out), "--no-progress"]
    start = time.perf_counter()
    subprocess.run(command + ([] if cache else ["--no-cache"]), check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    compute = json.loads((out / "metrics.json").read_text())["compute"]
    return wall, compute["train_seconds"], compute["image_passes"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pngs", type=int, default=48, help="APTOS-size PNGs (3216x2136)")
    parser.add_argument("--jpegs", type=int, default=480, help="Intel-size JPEGs (150x150)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one, removed after)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--no-train", action="store_true", help="skip the end-to-end training epochs")
    parser.add_argument("--cached-only", action="store_true", help="skip the runs without the cache")
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="fkt-cache-bench-") as tmp:
        work = args.dir or Path(tmp)
        root = work / "data"
        os.environ["FKT_CACHE"] = str(work / "cache")  # a fresh cache: the build is measured, not found
        print(f"machine: {machine()}", flush=True)
        generate(root, args.pngs, args.jpegs)
        seconds, n = build_seconds(root, args)
        print(f"cache build: {n} images in {seconds:.1f} s, {n / seconds:.1f} images/s, "
              f"{n / seconds / cores:.1f} images/s per core", flush=True)
        modes = (True,) if args.cached_only else (False, True)
        loading = {cache: loading_epoch(root, args, cache) for cache in modes}
        for cache, (secs, images, workers, grew) in loading.items():
            print(f"loading epoch {'with' if cache else 'without'} the cache: {images} images in {secs:.2f} s "
                  f"({images / secs:.1f} images/s, {workers} workers)", flush=True)
        if grew := loading[True][3]:
            print(f"resident memory over the cached epoch: anonymous {grew['RssAnon']:+.0f} MB, file-backed "
                  f"{grew['RssFile']:+.0f} MB (the cache: {n * args.image_size ** 2 * 3 / 1e6:.0f} MB, paged from "
                  "the memory map, not copied)", flush=True)
        if not args.cached_only:
            print(f"loading speed-up: {loading[False][0] / loading[True][0]:.1f}x", flush=True)
        if not args.no_train:
            runs = {cache: train_epoch(root, work / f"run-{cache}", args, cache) for cache in modes}
            for cache, (wall, train, passes) in runs.items():
                print(f"fkt train, 1 epoch {'with' if cache else 'without'} the cache ({args.backbone}, "
                      f"{args.image_size} px, {args.accelerator}, {args.precision}): {wall:.1f} s wall, {train:.1f} s "
                      f"training, {passes / train:.1f} images/s (validation included)", flush=True)
            print(f"waiting for data with the cache: about {100 * min(1.0, loading[True][0] / runs[True][1]):.0f}% "
                  "of the training epoch (loading epoch / training seconds)", flush=True)
            if not args.cached_only:
                print(f"training speed-up: {runs[False][0] / runs[True][0]:.2f}x wall, "
                      f"{runs[False][1] / runs[True][1]:.2f}x training "
                      f"(a first run adds the {seconds:.1f} s build)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
