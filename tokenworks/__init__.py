"""tokenworks: an AI factory in one Python package (see ARCHITECTURE.md)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tokenworks")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
