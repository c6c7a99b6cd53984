"""fkt: functional knowledge transfer, compared fairly with supervised and two-stage training."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fkt")
except PackageNotFoundError:  # a source tree on PYTHONPATH (the GPU machine), not installed
    __version__ = "0.1.0+source"
