"""fkt's own per-step cost: `fkt bench` on a step with next to no arithmetic (batch 2, 8x8
images, ResNet-18), fkt against the bare loop, both in this process.

    python benchmarks/overhead.py [METHODS]      (default: supervised,functional-clean)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from fkt import bench


def main(argv: list[str]) -> int:
    methods = argv[0] if argv else "supervised,functional-clean"
    args = argparse.Namespace(methods=methods, backbone="resnet18", stem="imagenet", image_size=8, batch_size=2,
                              device="cpu", precision="32-true", compile=False, steps=40, warmup=10, repeats=3,
                              out=None)
    settings = bench.settings_from_args(args)
    for method in settings.methods:
        for impl in bench.IMPLS:
            r = bench.measure(method, impl, asdict(settings))
            print(f"{method} {impl}: step {r['step_ms']:.1f} ms (median of repeats), fastest {r['step_ms_min']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
