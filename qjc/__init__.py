"""qjc: an ahead-of-time inference compiler."""

import os as _os

__version__ = "0.1.0"

# In a source checkout imported straight from the repository root (the current directory on
# sys.path shadows the installed mapping), frontends/, passes/ and backends/ sit beside qjc/ rather
# than inside it; let them resolve as qjc.frontends, qjc.passes and qjc.backends all the same.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _os.path.isfile(
        _os.path.join(_root, "backends", "base.py")):
    __path__.append(_root)  # noqa: F821  (a package's __path__)

from qjc.api import Options, compile, load  # noqa: E402

__all__ = ["__version__", "compile", "load", "Options"]
