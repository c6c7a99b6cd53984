"""The presets: one YAML file per experiment, shipped inside the package so that an installed fkt
has them wherever it runs (read with importlib.resources, not from a repository checkout)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fkt.errors import UserError


def preset_names() -> list[str]:
    """Sorted: --help and the unknown-preset line list them in the same order everywhere."""
    return sorted(entry.name[:-5] for entry in resources.files(__name__).iterdir() if entry.name.endswith(".yaml"))


def find_preset(name: str) -> Path:
    """A packaged preset by name (`quick`), or a file of one's own by path (`my/run.yaml`)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise UserError(f"--config {name}: no such file")
        return path
    if name not in preset_names():
        raise UserError(f"--preset {name}: unknown preset; known: {', '.join(preset_names())}")
    return Path(str(resources.files(__name__) / f"{name}.yaml"))
