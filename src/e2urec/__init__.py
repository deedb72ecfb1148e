"""e2urec: efficient and effective unlearning for LLM-based recommenders."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("e2urec")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+source"
