"""The verifier: valid graphs pass; each kind of breakage (made by mutating Node / Value fields
directly, as a buggy pass would) is reported, naming the node; several problems come at once."""

from __future__ import annotations

import numpy as np
import pytest

from qjc.errors import VerifyError
from qjc.ir import Graph, SymExpr, TensorType, boolean, f16, f32, i64
from qjc.ir.verifier import CHECKS, check, verify

BATCH = SymExpr.symbol("batch")


def _graph() -> Graph:
    """x -> mul(x, w) -> gelu -> where(mask, ., half) -> cast; every op kind the tests mutate."""
    g = Graph("main")
    g.add_symbol("batch", 1, 8)
    x = g.add_input("x", TensorType((BATCH, 4), f32))
    mask = g.add_input("mask", TensorType((BATCH, 1), boolean))
    w = g.add_constant("w", np.ones((4,), np.float32))
    half = g.add_constant("half", np.array(0.5, np.float32))
    h = g.op("mul", x, w, name="h")
    a = g.op("gelu", h, name="a")
    s = g.op("where", mask, a, half, name="s")
    c = g.op("clamp", s, min=-1.0, name="c")
    y = g.op("cast", c, to=f16, name="y")
    g.set_outputs(y)
    return g


def _fused_graph() -> Graph:
    sub = Graph("group0")
    p0 = sub.add_input("p0", TensorType((BATCH, 4), f32))
    p1 = sub.add_input("p1", TensorType((4,), f32))
    sub.set_outputs(sub.op("add", p0, p1, name="r"))
    g = Graph("main")
    g.add_symbol("batch", 1, 8)
    x = g.add_input("x", TensorType((BATCH, 4), f32))
    b = g.add_input("b", TensorType((4,), f32))
    (out,) = g.add_node("fused", [x, b], {"kind": "elementwise"}, sub, names=["out"])
    g.set_outputs(g.op("neg", out, name="n"))
    return g


def _node(g: Graph, name: str):
    return next(n for n in g.nodes if n.outputs[0].name == name)


def _problems_of(g: Graph) -> list[str]:
    problems = check(g)
    with pytest.raises(VerifyError) as info:
        verify(g)
    assert info.value.problems == problems
    return problems


def _only(g: Graph, *words: str) -> str:
    """The single problem of ``g``, which must contain every one of ``words``."""
    problems = _problems_of(g)
    assert len(problems) == 1, problems
    for w in words:
        assert w in problems[0], problems
    return problems[0]


def test_valid_graphs_pass():
    for g in (_graph(), _fused_graph(), _graph().copy()):
        assert check(g) == []
        verify(g)


def test_checks_are_a_named_table():
    names = [name for name, _ in CHECKS]
    assert len(names) == len(set(names)) >= 10
    assert all(callable(fn) for _, fn in CHECKS)


# ---- one breakage at a time ----------------------------------------------------------------------


def test_unknown_op():
    g = _graph()
    _node(g, "a").op = "gelu_fast"
    _only(g, "%a = gelu_fast(...)", "unknown op 'gelu_fast'", "did you mean")


def test_arity():
    g = _graph()
    n = _node(g, "a")
    n.inputs.append(g.inputs[0])
    _only(g, "%a = gelu(...)", "takes 1 inputs, got 2")


def test_unknown_attribute():
    g = _graph()
    _node(g, "h").attrs["axis"] = 1
    _only(g, "%h = mul(...)", "unknown attribute(s) ['axis']")


def test_missing_attribute_default():
    g = _graph()
    del _node(g, "a").attrs["approximate"]
    _only(g, "%a = gelu(...)", "attribute 'approximate' is missing")


def test_missing_required_attribute():
    g = _graph()
    del _node(g, "y").attrs["to"]
    problems = _problems_of(g)
    assert any("%y = cast(...)" in p and "needs attribute 'to'" in p for p in problems), problems


def test_attribute_of_wrong_kind():
    g = _graph()
    _node(g, "a").attrs["approximate"] = 3
    _only(g, "%a = gelu(...)", "attribute 'approximate'", "expected a string")


def test_attribute_not_normalized():
    g = _graph()
    _node(g, "c").attrs["min"] = -1  # an int where the schema stores a float
    _only(g, "%c = clamp(...)", "attribute 'min' is -1, not its normalized form -1.0")


def test_attribute_bad_choice():
    g = _graph()
    _node(g, "a").attrs["approximate"] = "fast"
    _only(g, "%a = gelu(...)", "must be one of")


def test_use_before_definition():
    g = _graph()
    g.nodes[1], g.nodes[2] = g.nodes[2], g.nodes[1]  # where(mask, %a, ...) now comes before %a
    _only(g, "%s = where(...)", "uses %a before it is defined")


def test_use_of_a_value_from_another_graph():
    g = _graph()
    stranger = Graph("other").add_input("z", TensorType((BATCH, 4), f32))
    _node(g, "a").inputs[0] = stranger
    _only(g, "%a = gelu(...)", "uses %z which is not defined in this graph")


def test_duplicate_names():
    g = _graph()
    _node(g, "a").outputs[0].name = "h"
    assert any("value name %h is defined 2 times" in p for p in _problems_of(g))


def test_constant_key_differs_from_value_name():
    g = _graph()
    g.constants["half"].value.name = "halves"
    _only(g, "constant entry 'half' holds a value named %halves")


def test_producer_inconsistent():
    g = _graph()
    a = _node(g, "a").outputs[0]
    a.producer = _node(g, "h")
    _only(g, "%a = gelu(...)", "output %a names a different producer (%h = mul(...))")


def test_graph_input_with_producer():
    g = _graph()
    g.inputs[0].producer = _node(g, "h")
    _only(g, "graph input %x has a producer")


def test_stored_type_differs_from_inferred():
    g = _graph()
    _node(g, "a").outputs[0].type = TensorType((BATCH, 8), f32)
    problems = _problems_of(g)
    assert "%a = gelu(...): output %a is stored as f32[batch,8] but infers as f32[batch,4]" in problems[0]
    # the where node that reads %a now broadcasts to the wrong shape, and says so too
    assert problems[1:] == ["%s = where(...): output %s is stored as f32[batch,4] but infers as f32[batch,8]"]


def test_type_inference_fails():
    g = _graph()
    g.inputs[1].type = TensorType((BATCH, 1), f32)  # where's condition is no longer bool
    _only(g, "%s = where(...)", "type inference fails", "condition must be bool")


def test_graph_output_not_defined():
    g = _graph()
    g.outputs.append(Graph("other").add_input("z", TensorType((1,), f32)))
    _only(g, "graph output %z is not defined in graph main")


def test_graph_without_outputs():
    g = _graph()
    g.set_outputs()
    _only(g, "graph main has no outputs")


def test_fused_node_without_subgraph():
    g = _fused_graph()
    g.nodes[0].subgraph = None
    _only(g, "%out = fused(...)", "needs a subgraph")


def test_fused_subgraph_inputs_differ_from_operands():
    g = _fused_graph()
    g.nodes[0].subgraph.inputs[1].type = TensorType((8,), f32)
    problems = _problems_of(g)
    assert any("%out = fused(...): operand 1 %b is f32[4] but subgraph input %p1 is f32[8]" in p
               for p in problems), problems


def test_fused_operand_count():
    g = _fused_graph()
    g.nodes[0].inputs.pop()
    _only(g, "%out = fused(...)", "1 operands for a subgraph of 2 inputs")


def test_fused_outputs_differ_from_subgraph_outputs():
    g = _fused_graph()
    g.nodes[0].outputs[0].type = TensorType((BATCH, 4), f16)
    problems = _problems_of(g)
    assert problems == [
        "%out = fused(...): output %out is stored as f16[batch,4] but infers as f32[batch,4]",
        "%n = neg(...): output %n is stored as f32[batch,4] but infers as f16[batch,4]",  # its user
    ]


def test_non_fused_node_with_subgraph():
    g = _graph()
    _node(g, "a").subgraph = _fused_graph().nodes[0].subgraph
    _only(g, "%a = gelu(...)", "carries a subgraph but op gelu is not fused")


def test_constant_data_shape_and_dtype():
    g = _graph()
    g.constants["w"].data = np.ones((5,), np.float64)
    problems = _problems_of(g)
    assert problems == ["constant %w is declared f32[4] but its data has shape (5,)",
                        "constant %w is declared f32 but its data is float64"]


def test_constant_without_data_is_fine():
    g = _graph()
    g.constants["w"].data = None
    assert check(g) == []


def test_undeclared_symbol():
    g = _graph()
    del g.symbols["batch"]
    _only(g, "symbol 'batch' (used by %x: f32[batch,4]) is not declared")


def test_symbols_are_checked_inside_subgraphs_but_declared_only_at_the_top():
    g = _fused_graph()
    assert g.nodes[0].subgraph.symbols == {}  # the subgraph declares none and is still valid
    seq = SymExpr.symbol("seq")
    g.nodes[0].subgraph.outputs[0].type = TensorType((seq, 4), f32)
    problems = _problems_of(g)
    assert any("symbol 'seq'" in p and "is not declared" in p for p in problems), problems


def test_subgraph_problems_are_prefixed_with_the_fused_node():
    g = _fused_graph()
    sub = g.nodes[0].subgraph
    sub.nodes[0].op = "addd"
    problems = _problems_of(g)
    assert any(p.startswith("in subgraph group0 of %out = fused(...): %r = addd(...): unknown op 'addd'")
               for p in problems), problems


def test_a_check_that_crashes_is_reported_not_raised():
    g = _graph()
    _node(g, "a").inputs[0] = None  # not a Value at all
    problems = _problems_of(g)
    assert any("operand 0 is a NoneType, not a Value" in p for p in problems), problems


# ---- many at once --------------------------------------------------------------------------------


def test_several_problems_reported_at_once():
    g = _graph()
    _node(g, "h").op = "mull"                                          # unknown op
    _node(g, "a").attrs["approximate"] = "fast"                        # bad attribute
    _node(g, "c").outputs[0].type = TensorType((BATCH, 4), i64)        # wrong stored type
    g.constants["w"].data = np.ones((4,), np.float16)                  # constant dtype
    g.outputs.append(Graph("other").add_input("z", TensorType((1,), f32)))  # dangling output
    with pytest.raises(VerifyError) as info:
        verify(g)
    problems = info.value.problems
    expected = ["unknown op 'mull'", "must be one of", "output %c is stored as i64[batch,4]",
                "constant %w is declared f32 but its data is float16", "graph output %z is not defined"]
    for words in expected:
        assert sum(words in p for p in problems) == 1, (words, problems)
    message = str(info.value)
    assert message.startswith("graph main failed verification:")
    assert all(p in message for p in problems)
