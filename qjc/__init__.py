"""qjc: an ahead-of-time inference compiler."""

__version__ = "0.1.0"

from qjc.api import Options, compile, load  # noqa: E402

__all__ = ["__version__", "compile", "load", "Options"]
