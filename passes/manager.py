"""Runs passes over a graph in order, with instruments that watch each step.

A pass is anything with a ``name`` and ``run(graph, ctx) -> Graph`` (local rewrites are wrapped in
a ``RewritePass``, see rewrite.py). Instruments hook in before and after every pass: the verifier
(so a broken graph is blamed on the pass that broke it), IR dumps, timings. Everything a pass may
read besides the graph travels in an explicit ``PassContext``; there are no module-level settings.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO, runtime_checkable

from qjc import knobs
from qjc.errors import InternalError, QJCError, VerifyError
from qjc.ir.graph import Graph


@dataclass
class PassContext:
    """What a pass may consult besides the graph, and where it reports back."""

    options: dict[str, Any] = field(default_factory=dict)
    # The chosen backend's Capabilities; None while no backend is chosen (e.g. in unit tests).
    capabilities: Any | None = None
    debug: int = field(default_factory=lambda: knobs.DEBUG.get())
    # Human-readable notes from passes ("canonicalize: drop_noop_cast x3"), in order.
    log: list[str] = field(default_factory=list)
    # (pass name, seconds) for every pass run under a TimingInstrument, in order.
    timings: list[tuple[str, float]] = field(default_factory=list)

    def note(self, pass_name: str, message: str) -> None:
        line = f"{pass_name}: {message}"
        self.log.append(line)
        if self.debug >= 2:
            print(f"[qjc] {line}", file=sys.stderr)


@runtime_checkable
class Pass(Protocol):
    """A module pass. It may mutate ``graph`` in place; it returns the graph to continue with."""

    name: str

    def run(self, graph: Graph, ctx: PassContext) -> Graph: ...


class PassBrokeGraphError(InternalError):
    """A pass left a graph the verifier rejects: a bug in that pass."""

    def __init__(self, pass_name: str, index: int, cause: VerifyError) -> None:
        super().__init__(
            f"pass {pass_name!r} (step {index + 1}) left an invalid graph: {cause.message}",
            "set QJC_DUMP_IR=<dir> to see the IR before and after each pass",
        )
        self.pass_name = pass_name
        self.problems = cause.problems


class Instrument:
    """Hooks around a pipeline run. ``index`` is the pass's 0-based position in the pipeline.

    ``after`` hooks run in the reverse order of ``before`` hooks, so the first instrument wraps the
    others the way nested context managers do (the last one sits closest to the pass)."""

    def start(self, graph: Graph, ctx: PassContext) -> None:
        pass

    def before(self, pass_: Pass, graph: Graph, ctx: PassContext) -> None:
        pass

    def after(self, pass_: Pass, graph: Graph, ctx: PassContext, index: int) -> None:
        pass

    def finish(self, graph: Graph, ctx: PassContext) -> None:
        pass


class VerifyInstrument(Instrument):
    """Verifies the input graph and the graph after every pass."""

    def start(self, graph: Graph, ctx: PassContext) -> None:
        from qjc.ir.verifier import verify

        try:
            verify(graph)
        except VerifyError as e:
            raise VerifyError(graph.name, [f"(input to the pass pipeline, before any pass) {p}"
                                           for p in e.problems]) from None

    def after(self, pass_: Pass, graph: Graph, ctx: PassContext, index: int) -> None:
        from qjc.ir.verifier import verify

        try:
            verify(graph)
        except VerifyError as e:
            raise PassBrokeGraphError(pass_.name, index, e) from e


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


class DumpIRInstrument(Instrument):
    """Writes ``00_input.txt`` and then ``NN_<pass>.txt`` after the NN-th pass into ``directory``.

    Existing files are overwritten, never deleted: several pipelines of one compile may share the
    directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = os.fspath(directory)

    def _write(self, file_name: str, graph: Graph) -> None:
        from qjc.ir.printer import print_graph

        os.makedirs(self.directory, exist_ok=True)
        with open(os.path.join(self.directory, file_name), "w", encoding="utf-8") as f:
            f.write(print_graph(graph))

    def start(self, graph: Graph, ctx: PassContext) -> None:
        self._write("00_input.txt", graph)

    def after(self, pass_: Pass, graph: Graph, ctx: PassContext, index: int) -> None:
        self._write(f"{index + 1:02d}_{_file_safe(pass_.name)}.txt", graph)


class PrintIRInstrument(Instrument):
    """Prints the IR after every pass (QJC_DEBUG >= 3)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def after(self, pass_: Pass, graph: Graph, ctx: PassContext, index: int) -> None:
        from qjc.ir.printer import print_graph

        stream = self.stream or sys.stderr
        print(f"// ---- IR after pass {index + 1}: {pass_.name}", file=stream)
        print(print_graph(graph), file=stream)


class TimingInstrument(Instrument):
    """Seconds spent in each pass (instrument overhead excluded when this instrument is listed last)."""

    def __init__(self, print_report: bool = False, stream: TextIO | None = None) -> None:
        self.records: list[tuple[str, float]] = []
        self.print_report = print_report
        self.stream = stream
        self._started = 0.0

    def before(self, pass_: Pass, graph: Graph, ctx: PassContext) -> None:
        self._started = time.perf_counter()

    def after(self, pass_: Pass, graph: Graph, ctx: PassContext, index: int) -> None:
        seconds = time.perf_counter() - self._started
        self.records.append((pass_.name, seconds))
        ctx.timings.append((pass_.name, seconds))

    def finish(self, graph: Graph, ctx: PassContext) -> None:
        if self.print_report:
            print(self.report(), file=self.stream or sys.stderr)

    def report(self) -> str:
        total = sum(s for _, s in self.records)
        width = max([len("pass")] + [len(n) for n, _ in self.records])
        lines = [f"{'#':>3}  {'pass':<{width}}  {'ms':>10}  {'%':>6}"]
        for i, (name, seconds) in enumerate(self.records, start=1):
            share = 100.0 * seconds / total if total > 0 else 0.0
            lines.append(f"{i:>3}  {name:<{width}}  {seconds * 1e3:>10.3f}  {share:>6.1f}")
        total_share = 100.0 if total > 0 else 0.0
        lines.append(f"{'':>3}  {'total':<{width}}  {total * 1e3:>10.3f}  {total_share:>6.1f}")
        return "\n".join(lines)


class PassManager:
    def __init__(self, passes: Sequence[Pass], instruments: Sequence[Instrument] = ()) -> None:
        for p in passes:
            if not isinstance(p, Pass):
                raise TypeError(f"{p!r} is not a pass: it needs a `name` and a `run(graph, ctx)` method")
        self.passes = list(passes)
        self.instruments = list(instruments)

    @classmethod
    def from_knobs(cls, passes: Sequence[Pass]) -> PassManager:
        """Instruments chosen by QJC_VERIFY, QJC_DUMP_IR and QJC_DEBUG (see qjc/knobs.py)."""
        instruments: list[Instrument] = []
        if knobs.VERIFY.get():
            instruments.append(VerifyInstrument())
        dump_dir = knobs.DUMP_IR.get()
        if dump_dir:
            instruments.append(DumpIRInstrument(dump_dir))
        debug = knobs.DEBUG.get()
        if debug >= 3:
            instruments.append(PrintIRInstrument())
        # Last, so that it sits closest to each pass and times the pass alone.
        instruments.append(TimingInstrument(print_report=debug >= 2))
        return cls(passes, instruments)

    def run(self, graph: Graph, ctx: PassContext | None = None) -> Graph:
        ctx = ctx if ctx is not None else PassContext()
        for inst in self.instruments:
            inst.start(graph, ctx)
        for index, pass_ in enumerate(self.passes):
            for inst in self.instruments:
                inst.before(pass_, graph, ctx)
            graph = self._run_one(pass_, index, graph, ctx)
            for inst in reversed(self.instruments):
                inst.after(pass_, graph, ctx, index)
        for inst in self.instruments:
            inst.finish(graph, ctx)
        return graph

    @staticmethod
    def _run_one(pass_: Pass, index: int, graph: Graph, ctx: PassContext) -> Graph:
        try:
            result = pass_.run(graph, ctx)
        except QJCError:
            raise
        except Exception as e:  # a bug in the pass: say which one
            raise InternalError(
                f"pass {pass_.name!r} (step {index + 1}) crashed: {type(e).__name__}: {e}") from e
        if not isinstance(result, Graph):
            raise InternalError(f"pass {pass_.name!r} returned {type(result).__name__}, not a Graph",
                                "a pass that edits the graph in place still returns it")
        return result
