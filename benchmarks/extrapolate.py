"""Wall time of a long training run, extrapolated from an `fkt bench` JSON.

    python benchmarks/extrapolate.py BENCH.json [--method functional-clean] [--epochs 100] [--images 50000]

Training steps only, at the measured steady-state throughput (no start-up, validation, test
evaluation or checkpoint writes, and data already in memory): a lower bound on the real run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fkt.bench import IMPLS, extrapolate_seconds


def hms(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min {s:02d} s" if h else f"{m} min {s:02d} s"


def describe(report: dict, method: str, epochs: int, images: int) -> list[str]:
    env = report["env"]
    lines = []
    for impl in IMPLS:
        try:
            seconds = extrapolate_seconds(report, method, impl, epochs, images)
        except KeyError:
            continue
        rate = epochs * images / seconds
        lines.append(f"extrapolated: {epochs} epochs of {method} {env['backbone']} on {images:,} "
                     f"{env['image_size']}x{env['image_size']} images ({impl}, {env['precision']}, batch "
                     f"{env['batch_size']}, {env['device_name']}): {rate:,.0f} images/s -> {hms(seconds)} "
                     f"({seconds:,.0f} s; training steps only)")
    if not lines:
        raise SystemExit(f"no {method} measurement in the report")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--method", default="functional-clean")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--images", type=int, default=50_000)
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text())
    print("\n".join(describe(report, args.method, args.epochs, args.images)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
