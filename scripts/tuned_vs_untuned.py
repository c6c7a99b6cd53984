"""A tuned grid (grid.tune) against the same cells untuned, pooled over labelled draws: per arm its test
accuracy in each, tuned minus untuned (pairs: the same split seed and training seed), and within each
grid functional minus supervised-matched (the same pairs). `fkt reproduce` reports each draw apart.

    python scripts/tuned_vs_untuned.py runs/few-labels-tuned runs/few-labels-ssl "trainer.epochs=2"
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from fkt.report.stats import paired_difference

ARMS = ("supervised-matched", "functional")


def accuracies(grid: Path, where: dict[str, object]) -> dict[tuple[str, object, int], float]:
    """(arm, split seed, seed) -> test accuracy %, for the cells whose axis values include `where`."""
    found = {}
    for path in sorted(grid.glob("runs/*/metrics.json")):
        run = json.loads(path.read_text())
        axes = run.get("axes", {})
        if run["arm"] in ARMS and all(axes.get(k) == v for k, v in where.items()):
            found[(run["arm"], axes.get("data.split_seed"), run["seed"])] = 100 * run["test"]["accuracy"]
    return found


def paired(a: dict, b: dict) -> str:
    d = paired_difference(a, b)  # keyed by (split seed, seed): pairs are the same draw and seed
    if d["p_value"] is None:
        return f"{d['mean_diff']:+.2f} ({d['n']} pair)"
    return f"{d['mean_diff']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}], p = {d['p_value']:.3f}, {d['n']} pairs"


def main() -> None:
    tuned_dir, untuned_dir, *filters = sys.argv[1:]
    where = {k: json.loads(v) for k, v in (f.split("=", 1) for f in filters)}
    tuned, untuned = accuracies(Path(tuned_dir), where), accuracies(Path(untuned_dir), where)
    for arm in ARMS:
        mine = {k[1:]: v for k, v in tuned.items() if k[0] == arm}
        base = {k[1:]: v for k, v in untuned.items() if k[0] == arm and k[1:] in mine}
        print(f"{arm}: tuned {statistics.mean(mine.values()):.2f} ± {statistics.stdev(mine.values()):.2f} "
              f"(n={len(mine)}), untuned {statistics.mean(base.values()):.2f} ± {statistics.stdev(base.values()):.2f}; "
              f"tuned - untuned {paired(mine, base)}")
    for name, grid in (("tuned", tuned), ("untuned", untuned)):
        f = {k[1:]: v for k, v in grid.items() if k[0] == "functional"}
        s = {k[1:]: v for k, v in grid.items() if k[0] == "supervised-matched" and k[1:] in f}
        splits = sorted({k[0] for k in f})
        per_split = "; ".join(f"split {d}: {paired({k: v for k, v in f.items() if k[0] == d}, s)}" for d in splits)
        print(f"{name}: functional - supervised-matched {paired(f, s)} ({per_split})")


if __name__ == "__main__":
    main()
