"""A preset's grid of (method, seed) cells, each its own run directory, then one table.

A cell whose metrics.json exists is not run again, so rerunning the same command after
a crash finishes the grid.
"""

from __future__ import annotations

import json
from pathlib import Path

from fkt.config import Config, build_config, deep_merge
from fkt.engine import train
from fkt.report.tables import results_table, write_results


def cell_config(config: Config, method: str, seed: int, out: Path) -> Config:
    data = config.to_dict()
    data["method"]["name"] = method
    data = deep_merge(data, config.grid.per_method.get(method, {}))
    data["seed"] = seed
    data["out"] = str(out / "runs" / f"{config.data.dataset}-{method}-seed{seed}")
    return build_config(data, f"grid cell {method}/seed {seed}")


def run_grid(config: Config, out: Path) -> str:
    out = Path(out)
    rows = []
    for method in config.grid.methods:
        for seed in config.grid.seeds:
            cell = cell_config(config, method, seed, out)
            metrics_file = Path(cell.out) / "metrics.json"
            if metrics_file.exists():
                print(f"[fkt] {cell.out}: done already, skipped")
                rows.append(json.loads(metrics_file.read_text()))
                continue
            print(f"[fkt] training {method}, seed {seed} -> {cell.out}", flush=True)
            rows.append(train(cell))
    write_results(out, rows)
    return results_table(rows)
