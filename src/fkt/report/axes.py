"""Grid axes (`grid.axes`) as text: in run directory names, table columns, titles and verdicts.

A run dict carries its axis values as `run["axes"]` ({dotted field: value}); a run without axes
has none, and every table and figure then looks as it did before axes existed.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Axes whose value is a label budget: their figure's x is the number of labelled images.
LABEL_AXES = ("data.labels_per_class", "data.labelled_fraction")


def axes_of(run: dict) -> dict[str, Any]:
    return run.get("axes") or {}


def axis_text(value: Any) -> str:
    """A value as people read it: null is "all" (every image, no limit), floats in their shortest form."""
    if value is None:
        return "all"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def short_names(keys: list[str]) -> dict[str, str]:
    """Each key's last part ("labels_per_class"), or the whole dotted key where two would read the same."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: name if last.count(name) == 1 else key for key, name in zip(keys, last)}


def axes_label(axes: dict[str, Any], sep: str = ", ") -> str:
    """`labels_per_class=10, epochs=5`: for titles, verdicts and (with sep "-") run directory names."""
    names = short_names(list(axes))
    return sep.join(f"{names[key]}={axis_text(value)}" for key, value in axes.items())


def path_safe(text: str) -> str:
    """The same text with only characters that are safe in a file name on every system."""
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", text)


def frozen(axes: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """A hashable key for grouping runs by their axis values (lists and dicts included)."""
    return tuple((key, json.dumps(value, sort_keys=True)) for key, value in axes.items())


def thawed(key: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return {name: json.loads(value) for name, value in key}


def axis_keys(runs: list[dict]) -> list[str]:
    """Every axis any run has, in the order the grid gave them."""
    return list(dict.fromkeys(key for run in runs for key in axes_of(run)))
