"""Every QJC_* environment variable qjc reads, typed, in one place.

Read them through the functions here, never through os.environ elsewhere, so `qjc knobs`
(and this file) is the complete list.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Knob:
    name: str
    kind: type
    default: object
    doc: str

    def get(self):
        raw = os.environ.get(self.name)
        if raw is None or raw == "":
            return self.default
        if self.kind is bool:
            return raw.strip().lower() not in ("0", "false", "no", "off")
        if self.kind is int:
            try:
                return int(raw)
            except ValueError:
                from qjc.errors import QJCError

                raise QJCError(f"{self.name}={raw!r} is not an integer") from None
        return raw


KNOBS: dict[str, Knob] = {}


def _knob(name: str, kind: type, default: object, doc: str) -> Knob:
    k = Knob(name, kind, default, doc)
    KNOBS[name] = k
    return k


# Verbosity of progress and debug output:
#   0 quiet, 1 stage timings (default for the CLI), 2 per-pass timings and fusion decisions,
#   3 also print the IR after every pass to stderr, 4 also generated source and tool commands.
DEBUG = _knob("QJC_DEBUG", int, 0, "debug level 0-4 (see qjc/knobs.py for what each level adds)")

# Directory to write the IR after every pass into, as NN_<pass>.txt (the same as --dump-ir).
DUMP_IR = _knob("QJC_DUMP_IR", str, None, "write the IR after every pass into this directory")

# Run the verifier after every pass. Tests turn it on; it is cheap enough to leave on by default.
VERIFY = _knob("QJC_VERIFY", bool, True, "verify the graph after every pass")

# Where compiled kernels and built libraries are cached, keyed by content hash.
CACHE_DIR = _knob("QJC_CACHE_DIR", str, os.path.join(os.path.expanduser("~"), ".cache", "qjc"),
                  "compile cache directory")

# Skip discovery of third-party backends through entry points (built-ins still load).
NO_PLUGINS = _knob("QJC_NO_PLUGINS", bool, False, "do not load qjc.backends entry-point plug-ins")


def describe() -> str:
    rows = [f"{k.name:<16} {k.kind.__name__:<4} default={k.default!r:<10} {k.doc}" for k in KNOBS.values()]
    return "\n".join(rows)
