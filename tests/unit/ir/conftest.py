"""Fixtures shared by the IR tests."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from qjc.ir.ops.registry import REGISTRY, Attr, OpDef, get_op

# Ops that exist only while a test asks for the ``test_ops`` fixture: the real op families give
# no single op with an attribute of every kind, nor a plain multi-output op that needs no subgraph.
_TEST_OPS = [
    OpDef("test_only_attr_kinds", "test", (1, 1), lambda ts, a: [ts[0]], lambda x, **attrs: x.copy(),
          attrs={
              "i": Attr("int"),
              "f": Attr("float", 1.0),
              "flag": Attr("bool", False),
              "s": Attr("str", ""),
              "dt": Attr("dtype", None, optional=True),
              "ints": Attr("ints", ()),
              "floats": Attr("floats", ()),
              "shape": Attr("dims", ()),
              "opt": Attr("int", None, optional=True),
          },
          doc="identity with one attribute of every kind (tests only)"),
    OpDef("test_only_split2", "test", (1, 1), lambda ts, a: [ts[0], ts[0]],
          lambda x: (x.copy(), np.negative(x)),
          doc="returns (x, -x) (tests only)"),
]


@pytest.fixture
def test_ops() -> Iterator[None]:
    get_op("add")  # load the real families first, so they never see the test ops registered
    for opdef in _TEST_OPS:
        REGISTRY[opdef.name] = opdef
    try:
        yield
    finally:
        for opdef in _TEST_OPS:
            REGISTRY.pop(opdef.name, None)
