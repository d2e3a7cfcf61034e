"""Helpers for tests that build graphs: one call checks that a graph survives the text form.

    from qjc.ir.testing import assert_roundtrip
    parsed = assert_roundtrip(graph)                 # print -> parse -> print, same text; both verify
    assert_roundtrip(graph, inputs=[x, y])           # also: both run identically in the interpreter
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qjc.errors import IRParseError
from qjc.ir.graph import Graph
from qjc.ir.interpreter import run
from qjc.ir.parser import parse_graph
from qjc.ir.printer import print_graph
from qjc.ir.verifier import verify


def constants_of(graph: Graph) -> dict[str, Any]:
    """Data of every constant that has some, by name, fused subgraphs included (the top graph's
    entry wins when a subgraph reuses a name)."""
    out: dict[str, Any] = {}
    for node in graph.nodes:
        if node.subgraph is not None:
            out.update(constants_of(node.subgraph))
    out.update({name: c.data for name, c in graph.constants.items() if c.data is not None})
    return out


def assert_roundtrip(graph: Graph, constants: Mapping[str, Any] | None = None,
                     inputs: Sequence[Any] | Mapping[str, Any] | None = None) -> Graph:
    """Print ``graph``, parse the text, print again and require identical text; verify both graphs.

    ``constants`` supplies data for constants that are not inlined (default: the graph's own).
    With ``inputs``, both graphs also run in the interpreter and must give bit-identical outputs.
    Returns the parsed graph.
    """
    verify(graph)
    text = print_graph(graph)
    try:
        parsed = parse_graph(text, constants=constants_of(graph) if constants is None else constants,
                             source="<printed graph>")
    except IRParseError as e:
        raise AssertionError(f"the printed graph does not parse: {e}\n{_numbered(text)}") from e
    again = print_graph(parsed)
    if again != text:
        diff = "".join(difflib.unified_diff(text.splitlines(True), again.splitlines(True),
                                            "printed", "printed after parsing"))
        raise AssertionError(f"IR text changed in a print -> parse -> print round trip:\n{diff}")
    verify(parsed)
    if inputs is not None:
        want, got = run(graph, inputs), run(parsed, inputs)
        for i, (w, g) in enumerate(zip(want, got, strict=True)):
            assert np.asarray(g).dtype == np.asarray(w).dtype, f"output {i}: dtype {g.dtype} != {w.dtype}"
            np.testing.assert_array_equal(g, w, err_msg=f"output {i} differs after the round trip")
    return parsed


def _numbered(text: str) -> str:
    return "\n".join(f"{i:4d}  {line}" for i, line in enumerate(text.splitlines(), start=1))
