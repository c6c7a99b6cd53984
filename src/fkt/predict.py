"""`fkt predict`: classify image files with a checkpoint.

The images go through the very path evaluation uses (the data layer's `ResizedImages` and
`fkt.evaluate.predict`), so a prediction and a test metric cannot drift apart. Unreadable files
are found first by the same scan that guards training, listed with their reason, and skipped.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from fkt.data import image_side
from fkt.data.base import ImageSet, is_image_name, walk_files
from fkt.data.module import ResizedImages, default_workers
from fkt.data.scan import scan_images
from fkt.errors import UserError
from fkt.evaluate import predict
from fkt.hardware import resolve_device
from fkt.methods import load_module
from fkt.io import atomic_write_text

ALL_READ, SOME_SKIPPED = 0, 1
SHOWN_SKIPPED = 20


def expand_paths(paths: list[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files named, under folders (recursively) or matched by globs, each once, in the order
    given; and (path, reason) for arguments that name nothing."""
    found: dict[Path, None] = {}
    missing: list[tuple[Path, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.update(dict.fromkeys(p for p in walk_files(path) if is_image_name(p)))
        elif path.is_file() or path.is_symlink():
            found[path] = None  # named outright: read it whatever its extension, the scan says if it is no image
        else:
            matches = sorted(Path(m) for m in glob.glob(raw, recursive=True))
            files = [m for m in matches if m.is_file() and is_image_name(m)]
            files += [p for m in matches if m.is_dir() for p in walk_files(m) if is_image_name(p)]
            if files:
                found.update(dict.fromkeys(files))
            else:
                missing.append((path, "no such file" if not glob.has_magic(raw) else "matches no image file"))
    return list(found), missing


def classify(checkpoint: Path, files: list[Path], batch_size: int, device: torch.device, progress: bool,
             trust: bool = False) -> tuple[list[str], torch.Tensor]:
    """Class names and softmax probabilities (N, classes) for readable image files."""
    module = load_module(checkpoint, trust)
    classes = module.hparams.classes or [str(i) for i in range(module.classifier.out_features)]
    if not module.trains_classifier:
        print(f"[fkt] {checkpoint}: an SSL pretraining stage; its classifier was never trained", file=sys.stderr)
    images = ResizedImages(ImageSet(targets=np.zeros(len(files)), files=files), image_side(module.cfg))
    loader = DataLoader(images, batch_size=batch_size, num_workers=default_workers(False))
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc="predict", unit="batch", file=sys.stderr, disable=None)
    logits, _ = predict(module, loader, device)
    return classes, logits.softmax(dim=1)


def rows(files: list[Path], classes: list[str], probs: torch.Tensor, top_k: int) -> list[dict]:
    """One record per image: the best class, its probability, and the top k."""
    values, indices = probs.topk(min(top_k, len(classes)), dim=1)
    return [{"path": str(path), "class": classes[int(idx[0])], "probability": float(val[0]),
             "top_k": [{"class": classes[int(i)], "probability": float(v)} for v, i in zip(val, idx)]}
            for path, val, idx in zip(files, values, indices)]


def as_csv(records: list[dict], top_k: int) -> str:
    """path, class, probability, then class_2, probability_2, ... up to the top k."""
    head = ["path", "class", "probability"] + [f"{c}_{i}" for i in range(2, top_k + 1) for c in ("class", "probability")]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(head)
    for record in records:
        rest = [x for entry in record["top_k"][1:] for x in (entry["class"], f"{entry['probability']:.6f}")]
        writer.writerow([record["path"], record["class"], f"{record['probability']:.6f}", *rest])
    return buffer.getvalue()


def summary(records: list[dict], skipped: list[tuple[Path, str]]) -> str:
    counts = Counter(record["class"] for record in records)
    per_class = ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    extra = f" ({len(skipped)} unreadable skipped)" if skipped else ""
    return f"classified {len(records)} image(s){extra}: {per_class}"


def predict_command(args: argparse.Namespace) -> int:
    """Exit 0 when every file was read, 1 when some were skipped; none readable is a user error (2)."""
    if args.top_k < 1:
        raise UserError(f"--top-k {args.top_k}: must be at least 1")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    device = resolve_device(args.device)
    files, missing = expand_paths(args.paths)
    bad = missing + scan_images(files)
    unreadable = {path for path, _ in bad}
    good = [path for path in files if path not in unreadable]
    if not good:
        why = f"; e.g. {bad[0][0]}: {bad[0][1]}" if bad else ""
        raise UserError(f"no readable image among {' '.join(args.paths)} ({len(bad)} unreadable){why}")
    classes, probs = classify(args.checkpoint, good, args.batch_size, device, args.progress, args.trust_checkpoint)
    top_k = min(args.top_k, len(classes))
    records = rows(good, classes, probs, top_k)
    if args.format == "json":
        text = json.dumps({"checkpoint": str(args.checkpoint), "classes": classes, "predictions": records,
                           "skipped": [{"path": str(p), "reason": r} for p, r in bad]}, indent=2) + "\n"
    else:
        text = as_csv(records, top_k)
    for path, reason in bad[:SHOWN_SKIPPED]:
        print(f"fkt: skipped {path}: {reason}", file=sys.stderr)
    if len(bad) > SHOWN_SKIPPED:
        print(f"fkt: ... and {len(bad) - SHOWN_SKIPPED} more unreadable file(s)", file=sys.stderr)
    if args.out is None:
        sys.stdout.write(text)
        print(summary(records, bad), file=sys.stderr)
    else:
        atomic_write_text(args.out, text)
        print(summary(records, bad))
        print(f"wrote {args.out}")
    return SOME_SKIPPED if bad else ALL_READ
