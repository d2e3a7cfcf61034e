"""What a kernel generator returns, and the template environment they share."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qjc.ir.dims import Dim
from qjc.ir.dtypes import DType
from qjc.ir.graph import Value

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
NAME_PLACEHOLDER = "QJC_KNAME"


@dataclass
class Workspace:
    """A scratch buffer a step needs beside its operands (split-K partial sums, a permuted copy).
    ``persistent``: the engine keeps it zeroed at creation and never shares it (counters a kernel
    resets itself, like the arrival tickets of a last-CTA reduction); its size must be static."""

    dtype: DType
    numel: Dim
    persistent: bool = False

    def __post_init__(self) -> None:
        # the engine allocates persistent buffers once, before any shape is known
        if self.persistent and not isinstance(self.numel, int):
            raise ValueError(f"a persistent workspace needs a static size, got {self.numel}")


@dataclass
class KernelSource:
    """One launchable step: CUDA source defining ``cudaError_t <launcher>(void* const* p,
    const int64_t* S, cudaStream_t stream)`` (``p`` holds the operands' device pointers in the
    order of ``operands``, then the workspaces'), what it reads and writes, and its kind."""

    kind: str  # the template it came from: elementwise, row_reduce, gemm, attention, ...
    source: str  # with NAME_PLACEHOLDER where the unique name goes
    operands: list[Value]
    writes: list[Value]
    workspaces: list[Workspace] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    def finalize(self) -> KernelSource:
        """Name the kernel after its source, so identical steps (one per layer) share one kernel."""
        digest = hashlib.sha256(self.source.encode()).hexdigest()[:12]
        self.name = f"qk_{self.kind}_{digest}"
        return self

    @property
    def code(self) -> str:
        return self.source.replace(NAME_PLACEHOLDER, self.name)


@functools.lru_cache(maxsize=1)
def environment():
    try:
        import jinja2
    except ImportError as e:  # pragma: no cover - jinja2 is in the cuda extra
        from qjc.errors import MissingComponentError

        raise MissingComponentError(f"the cuda backend needs jinja2: {e}", "pip install 'qjc[cuda]'") from None
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(name=NAME_PLACEHOLDER, **context)


def indent(lines: list[str], spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line for line in lines)
