"""fkt: functional knowledge transfer, compared fairly with supervised and two-stage training.

For notebooks: `from fkt import Config, train, evaluate` (see fkt.api). They are loaded on first use,
so `import fkt` imports neither torch nor Lightning.
"""

import sys
import types
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fkt")
except PackageNotFoundError:  # a source tree on PYTHONPATH (the GPU machine), not installed
    __version__ = "0.2.0+source"

# name -> the module that defines it
_API = {"Config": "fkt.config", "train": "fkt.api", "evaluate": "fkt.api"}
__all__ = ["Config", "__version__", "evaluate", "train"]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'fkt' has no attribute {name!r}")


class _Package(types.ModuleType):
    """Keeps `fkt.evaluate` the API function. Importing the submodule fkt/evaluate.py would otherwise
    bind the module to the same name; it stays importable as `from fkt.evaluate import ...`."""

    def __setattr__(self, name: str, value) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
