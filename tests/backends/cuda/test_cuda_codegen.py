"""Generated CUDA / C++ source: each template emits the constructs it promises (no nvcc, no GPU)."""

from __future__ import annotations

import re

import pytest

from qjc.backends.cuda.backend import CudaBackend
from qjc.backends.cuda.cexpr import SymbolTable
from qjc.backends.cuda.codegen import generate_sources
from qjc.backends.cuda.exprgen import NotFusable
from qjc.backends.cuda.kernels.attention import attention_kernel
from qjc.backends.cuda.kernels.base import render
from qjc.backends.cuda.kernels.context import KernelContext
from qjc.backends.cuda.kernels.elementwise import elementwise_kernel
from qjc.backends.cuda.kernels.gemm import gemm_kernel
from qjc.backends.cuda.kernels.row_reduce import row_reduce_kernel
from qjc.backends.cuda.options import CudaOptions
from qjc.backends.cuda.plan import plan_program
from qjc.backends.cuda.prepare import prepare
from qjc.errors import BackendError, UnsupportedOpsError
from qjc.ir.graph import Graph
from qjc.ir.types import parse_type


def _ctx(g: Graph, materialized, blaslt: bool = False) -> KernelContext:
    return KernelContext(SymbolTable(g.symbols), {n: (r.lo, r.hi) for n, r in g.symbols.items()},
                         lambda v: v in materialized, blaslt=blaslt)


def _plain_linear(x_type: str, w_type: str, blaslt: bool = False):
    """The GEMM step of y = linear(x, w) with no epilogue ops, and its graph."""
    g = Graph()
    x = g.add_input("x", parse_type(x_type))
    w = g.add_input("w", parse_type(w_type))
    y = g.op("linear", x, w)
    return gemm_kernel(_ctx(g, {x, w, y}, blaslt), y.producer, [y]).finalize(), g


def test_elementwise_kernel_vectorizes_and_inlines_the_chain():
    g = Graph()
    g.add_symbol("seq", 1, 512)
    x = g.add_input("x", parse_type("bf16[2,seq,64]"))
    b = g.add_input("b", parse_type("bf16[64]"))
    y = g.op("gelu", g.op("add", x, b))
    src = elementwise_kernel(_ctx(g, {x, b}), [y]).finalize().code
    assert '#include "qjc_common.cuh"' in src
    # contiguous operands are read and written through 16-byte uint4 accesses (the helpers live in
    # the common header every kernel includes)
    assert "q_load_vec<VEC>" in src and "q_store_vec<VEC>" in src
    assert "uint4" in render("common.cuh.j2") and "__ldg(reinterpret_cast<const uint4*>" in render("common.cuh.j2")
    assert "q_gelu(" in src and " + " in src  # the add and the gelu are one kernel's body
    assert re.search(r"cudaError_t qk_elementwise_[0-9a-f]{12}\(void\* const\* p", src)
    assert "S[0]" in src  # the symbolic dim is read from the engine's symbol array


def test_elementwise_index_ops_are_index_arithmetic():
    g = Graph()
    x = g.add_input("x", parse_type("f32[2,8,16]"))
    t = g.op("transpose", x, perm=[0, 2, 1])
    lo = g.op("slice", t, starts=[0], ends=[4], axes=[2])
    hi = g.op("slice", t, starts=[4], ends=[8], axes=[2])
    c = g.op("concat", g.op("neg", hi), lo, axis=2)
    src = elementwise_kernel(_ctx(g, {x}), [c]).finalize().code
    assert "if (" in src and "else {" in src  # concat picks its operand per element
    assert "float4" not in src or "q_load" in src
    assert "q_load(p1" in src


def test_row_reduction_uses_warp_shuffles_and_fuses_prologue_and_epilogue():
    g = Graph()
    x = g.add_input("x", parse_type("f16[4,576]"))
    r = g.add_input("r", parse_type("f16[4,576]"))
    w = g.add_input("w", parse_type("f16[576]"))
    h = g.op("add", x, r)
    y = g.op("rms_norm", h, w)
    z = g.op("silu", y)
    src = row_reduce_kernel(_ctx(g, {x, r, w, h, z}), y.producer, [z], [h]).finalize().code
    assert "__shfl_xor_sync" in src
    assert "q_silu(" in src  # epilogue
    assert "rstd" in src and "co0[VEC]" in src  # the residual sum is stored on the way
    sm = row_reduce_kernel(_ctx(g, {x}), g.op("softmax", x).producer, [g.nodes[-1].outputs[0]], []).code
    assert "q_exp(" in sm and "__shfl_xor_sync" in sm


def test_gemm_kernel_carries_its_epilogue_and_tensor_cores():
    g = Graph()
    x = g.add_input("x", parse_type("bf16[2,16,64]"))
    w = g.add_input("w", parse_type("bf16[128,64]"))
    bias = g.add_input("bias", parse_type("bf16[128]"))
    res = g.add_input("res", parse_type("bf16[2,16,128]"))
    y = g.op("linear", x, w, bias)
    out = g.op("add", g.op("gelu", y, approximate="tanh"), res)
    src = gemm_kernel(_ctx(g, {x, w, bias, res, out}), y.producer, [out]).finalize().code
    assert "q_gelu_tanh(" in src  # the epilogue expression
    assert "mma.sync.aligned.m16n8k16" in src and "ldmatrix" in src and "cp.async" in src
    assert "void epilogue(" in src


def test_gemv_path_for_small_m_with_split_k():
    k, _ = _plain_linear("bf16[1,576]", "bf16[576,576]")
    assert "gemv<" in k.code and "last_split(tickets)" in k.code  # the last K split applies the epilogue
    assert [w.persistent for w in k.workspaces[:2]] == [False, True], "partial sums, then persistent tickets"


def test_attention_kernel_has_tensor_core_and_decode_paths():
    g = Graph()
    q = g.add_input("q", parse_type("bf16[1,9,128,64]"))
    k = g.add_input("k", parse_type("bf16[1,3,128,64]"))
    o = g.op("sdpa", q, k, k, causal=True)
    src = attention_kernel(_ctx(g, {q, k, o}), o.producer).finalize().code
    assert "attn_tc" in src and "attn_simt<4>" in src
    assert "g.Hq / g.Hkv" in src  # grouped-query heads
    assert "j <= i + (g.Sk - g.Sq)" in src  # causal, bottom-right


def test_host_engine_has_cuda_graphs_and_c_abi():
    g = Graph()
    g.add_symbol("batch", 1, 8)
    x = g.add_input("x", parse_type("f32[batch,32]"))
    w = g.add_constant("w", __import__("numpy").ones((16, 32), "float32"))
    g.set_outputs(g.op("relu", g.op("linear", x, w)))
    program = plan_program(prepare(g, None))
    sources = generate_sources(program, ("sm_90a",), True)
    host = next(u.source for u in sources.units if u.name == "host_engine.cpp")
    for construct in ("cudaStreamBeginCapture", "cudaGraphLaunch", "cudaGraphInstantiate", 'extern "C"',
                      "qjc_engine_create", "qjc_engine_run", "qjc_engine_output_shape", "qjc_engine_destroy",
                      "qjc_engine_last_error", "weights.safetensors"):
        assert construct in host, construct
    assert "qjc_engine_run" in sources.headers["qjc_engine.h"]
    # the relu is the GEMM's epilogue: one kernel
    assert program.kernel_kinds() == {"gemm": 1}


def test_local_fusion_groups_elementwise_chains_and_norm_prologues():
    g = Graph()
    x = g.add_input("x", parse_type("f32[4,64]"))
    r = g.add_input("r", parse_type("f32[4,64]"))
    h = g.op("add", x, r)
    n = g.op("layer_norm", h)
    out = g.op("mul", g.op("tanh", n), h)
    g.set_outputs(out, h)
    program = plan_program(prepare(g, None))
    # the add is co-produced by the norm kernel; tanh * h is the norm's epilogue
    assert program.kernel_kinds() == {"row_reduce": 1}
    unfused = plan_program(prepare(g, None), local_fusion=False)
    assert len(unfused.steps) == 4


def _norm_then_linear(extra_use: bool, shift: bool = False, width: int = 576) -> Graph:
    g = Graph()
    g.add_symbol("seq", 1, 64)
    x = g.add_input("x", parse_type(f"bf16[1,seq,{width}]"))
    gamma = g.add_input("g", parse_type(f"bf16[{width}]"))
    w = g.add_input("w", parse_type(f"bf16[96,{width}]"))
    n = g.op("mul", g.op("cast", g.op("rms_norm", g.op("cast", x, to="f32"), eps=1e-5), to="bf16"), gamma)
    if shift:  # not a scaling of the norm's result: A != 1/rms * chain(x)
        n = g.op("add", n, gamma)
    y = g.op("add", g.op("linear", n, w), g.op("slice", x, starts=[0], ends=[96], axes=[2]))
    g.set_outputs(*([y, n] if extra_use else [y]))
    return g


def test_rms_norm_read_only_by_a_linear_becomes_its_prologue():
    program = plan_program(prepare(_norm_then_linear(False), None))
    assert program.kernel_kinds() == {"gemm": 1}, "the norm has no kernel of its own"
    src = next(iter(program.kernels.values())).code
    # the GEMV sums the row's squares as it loads A and scales its dot products (also after a K split);
    # more rows store the normalized A once
    for construct in ("load_a<VEC>(a, A, (idx_t)m, k, lda, K, ss[m], x)", "ss += ",
                      "norm_finish(split_sum(ws, M, N, m, n), split_ss(ws, M, N, m), K)",
                      "q_launch(norm_rows<8>", "q_rsqrt_exact("):
        assert construct in src, construct
    # the normalized A's workspace holds every row (M is symbolic)
    (kernel,) = program.kernels.values()
    assert any(not ws.persistent and "seq" in str(ws.numel) and ws.dtype.name == "bf16" for ws in kernel.workspaces)
    # a norm result used elsewhere keeps its own kernel
    shared = plan_program(prepare(_norm_then_linear(True), None))
    assert shared.kernel_kinds() == {"row_reduce": 1, "gemm": 1}
    assert "norm_rows" not in "".join(k.code for k in shared.kernels.values())
    # a chain that does more than scale keeps the norm kernel too
    shifted = plan_program(prepare(_norm_then_linear(False, shift=True), None))
    assert shifted.kernel_kinds() == {"row_reduce": 1, "gemm": 1}
    # the option turns it off
    off = plan_program(prepare(_norm_then_linear(False), None), norm_prologue=False)
    assert off.kernel_kinds() == {"row_reduce": 1, "gemm": 1}
    # rows wider than NORM_PROLOGUE_MAX_K keep the norm kernel (measured slower there)
    wide = plan_program(prepare(_norm_then_linear(False, width=2048), None))
    assert wide.kernel_kinds() == {"row_reduce": 1, "gemm": 1}


def _every_read_has_a_writer(program) -> bool:
    """Each buffer a step reads is an input / weight / state, or written by an earlier step."""
    written = {b.id for b in program.buffers if b.kind in ("input", "weight", "state", "workspace")}
    for step in program.steps:
        kernel = program.kernels[step.kernel]
        writes = {step.operands[i] for i, v in enumerate(kernel.operands) if v in kernel.writes}
        reads = set(step.operands[:len(kernel.operands)]) - writes
        if not reads <= written:
            return False
        written |= writes
    return True


def test_norm_prologue_only_where_the_whole_chain_is_computed_in_the_gemm():
    """A norm group whose weight product sits outside it: the product's result is a buffer the norm
    kernel writes (no prologue). A cast of the chain to f16 could overflow before the GEMV scales by
    1/rms: no prologue either. A quotient by a weight only scales: prologue."""
    g = Graph()
    x = g.add_input("x", parse_type("bf16[1,4,64]"))
    gamma = g.add_input("g", parse_type("bf16[64]"))
    w = g.add_input("w", parse_type("bf16[32,64]"))
    sub = Graph("rn")
    a0 = sub.add_input("a0", x.type)
    sub.set_outputs(sub.op("cast", sub.op("rms_norm", sub.op("cast", a0, to="f32"), eps=1e-5), to="bf16"))
    (n,) = g.add_node("fused", [x], {"kind": "rms_norm", "name": "rn"}, subgraph=sub)
    g.set_outputs(g.op("linear", g.op("mul", n, gamma), w))
    program = plan_program(prepare(g, None))
    assert program.kernel_kinds() == {"row_reduce": 1, "gemm": 1} and _every_read_has_a_writer(program)

    h = Graph()
    x = h.add_input("x", parse_type("f32[2,64]"))
    gamma = h.add_input("g", parse_type("f32[64]"))
    w = h.add_input("w", parse_type("f16[32,64]"))
    h.set_outputs(h.op("linear", h.op("cast", h.op("rms_norm", x, gamma, eps=1e-5), to="f16"), w))
    assert plan_program(prepare(h, None)).kernel_kinds() == {"row_reduce": 1, "gemm": 1}

    q = Graph()
    x = q.add_input("x", parse_type("bf16[2,64]"))
    gamma = q.add_input("g", parse_type("bf16[64]"))
    w = q.add_input("w", parse_type("bf16[32,64]"))
    q.set_outputs(q.op("linear", q.op("div", q.op("rms_norm", x, eps=1e-5), gamma), w))
    program = plan_program(prepare(q, None))
    assert program.kernel_kinds() == {"gemm": 1} and _every_read_has_a_writer(program)


def test_an_epilogue_merge_that_would_close_a_cycle_is_undone():
    """y = h * rsqrt(mean(h * h)) after a GEMM that stores h: merging y's kernel into the GEMM's epilogue
    would make the GEMM wait for the mean, which waits for the GEMM (an ONNX-exported RMSNorm before the
    rule for its spelling existed planned forever); the planner keeps that kernel apart instead."""
    g = Graph()
    x = g.add_input("x", parse_type("f32[4,64]"))
    w = g.add_input("w", parse_type("f32[64,64]"))
    h = g.op("linear", x, w)
    m = g.op("mean", g.op("mul", h, h), axes=[1], keepdims=True)
    g.set_outputs(g.op("mul", h, g.op("rsqrt", m)), h)
    program = plan_program(prepare(g, None))
    assert program.kernel_kinds() == {"gemm": 1, "row_reduce": 1, "elementwise": 1}
    # beside an unrelated residual add before a norm whose sum is also an output (a co-product the cycle
    # check cannot force apart any further): the merge is still undone, where it used to plan forever
    r = g.add_input("r", parse_type("f32[4,64]"))
    s = g.op("add", x, r)
    n = g.op("layer_norm", s, axis=-1)
    g.set_outputs(*g.outputs, g.op("mul", g.op("tanh", n), s), s)
    assert plan_program(prepare(g, None)).kernel_kinds()["gemm"] == 1


def test_compute_dtype_keeps_the_signature():
    g = Graph()
    x = g.add_input("x", parse_type("f32[4,8]"))
    w = g.add_constant("w", __import__("numpy").ones((8, 8), "float32"))
    g.set_outputs(g.op("linear", x, w))
    p = prepare(g, "bf16")
    assert str(p.graph.inputs[0].type) == "f32[4,8]" and str(p.graph.outputs[0].type) == "f32[4,8]"
    assert p.stored_dtypes == {"w": "f32"}
    program = plan_program(p)
    assert program.weights == [("w", program.weights[0][1], "f32", "bf16")]


def test_unsupported_ops_are_listed():
    from qjc.ir.dtypes import parse_dtype

    g = Graph()
    x = g.add_input("x", parse_type("f32[4,32]"))
    g.set_outputs(g.op("quantize", x, dtype=parse_dtype("q4g32a_f16")))
    with pytest.raises(UnsupportedOpsError, match="quantize"):
        plan_program(prepare(g, None))


def test_not_fusable_is_reported_for_impossible_inline_values():
    g = Graph()
    x = g.add_input("x", parse_type("f32[4,4]"))
    s = g.op("softmax", x)
    with pytest.raises(NotFusable):
        elementwise_kernel(_ctx(g, {x}), [g.op("exp", s)])


def test_options_and_capabilities():
    opts = CudaOptions(archs=("sm_80", "sm_90a"), dtype="bf16")
    assert opts.compute_dtype == "bf16" and opts.stable_hash() == CudaOptions(archs=("sm_80", "sm_90a"),
                                                                              dtype="bf16").stable_hash()
    with pytest.raises(ValueError):
        CudaOptions(archs=("compute_90",))
    with pytest.raises(ValueError):
        CudaOptions(dtype="fp8")
    caps = CudaBackend().capabilities(opts)
    for op in ("linear", "sdpa", "rms_norm", "conv2d", "gather", "cumsum", "pad"):
        assert caps.accepts_op(op)
    assert not caps.accepts_op("quantize")
    assert {"elementwise", "gemm", "attention", "rope", "swiglu"} <= caps.fused_kinds
    from qjc.backends.npu_stub.backend import NpuStubOptions

    with pytest.raises(BackendError):
        CudaBackend().lower(Graph(), NpuStubOptions(), None)


def test_large_m_linear_calls_cublaslt_with_its_bias_epilogue_straight_into_the_output():
    g = Graph()
    g.add_symbol("seq", 1, 512)
    x = g.add_input("x", parse_type("bf16[4,seq,64]"))
    w = g.add_input("w", parse_type("bf16[128,64]"))
    bias = g.add_input("bias", parse_type("bf16[128]"))
    y = g.op("linear", x, w, bias)
    k = gemm_kernel(_ctx(g, {x, w, bias, y}, blaslt=True), y.producer, [y]).finalize()
    code = k.code
    assert k.notes["blaslt"] and "qjc_lt_matmul(g, stream) == 0" in code
    assert "g.d = p[2];" in code and "g.bias = p[3];" in code and "g.d_type = 2;" in code  # bf16 out, the bias fused
    assert "lt_epilogue" not in code  # nothing left for a second kernel
    # with M unknown until run time, qjc's own GEMV (M <= 8) comes first; the tensor-core GEMM is the fallback
    assert code.index("if (M <= 8 && batch == 1)") < code.index("qjc_lt_matmul") < code.index("launch_tc<128")
    # without the option the same step has no cuBLASLt call
    plain = gemm_kernel(_ctx(g, {x, w, bias, y}), y.producer, [y]).finalize()
    assert "qjc_lt_matmul" not in plain.code and not plain.notes["blaslt"]


def _linear_gelu_residual(dtype: str, n: int):
    g = Graph()
    x = g.add_input("x", parse_type(f"{dtype}[64,64]"))
    w = g.add_input("w", parse_type(f"{dtype}[{n},64]"))
    bias = g.add_input("bias", parse_type(f"{dtype}[{n}]"))
    res = g.add_input("res", parse_type(f"{dtype}[64,{n}]"))
    y = g.op("linear", x, w, bias)
    out = g.op("add", g.op("gelu", y), res)
    return gemm_kernel(_ctx(g, {x, w, bias, res, out}, blaslt=True), y.producer, [out]).finalize()


def test_cublaslt_product_goes_through_the_generated_epilogue_when_ops_are_fused():
    # 16-bit, even N: cuBLASLt adds the bias and rounds to f16 (what the fused epilogue starts from); the rest of
    # the epilogue (gelu, + res) runs on column pairs, without adding the bias again
    k = _linear_gelu_residual("f16", 128)
    code = k.code
    assert "g.bias = p[" in code and "g.d_type = 1;" in code and "lt_epilogue_pair(a, 0, (2 * i) / N" in code
    rest = code[code.index("void lt_epilogue_pair("):]
    assert "const float c_acc = q_round<__half>((float)acc);" in rest[:rest.index("\n}\n")], "bias added once"
    assert [(w.dtype.name, w.numel) for w in k.workspaces][-1] == ("f16", 64 * 128)
    # odd N (no column pairs): an f32 product, the whole epilogue (bias included) after it
    odd = _linear_gelu_residual("bf16", 127).code
    assert "g.bias = nullptr;" in odd and "g.d_type = 0;" in odd and "lt_epilogue_pair" not in odd
    assert "epilogue(a, 0, i / N, i % N, prod[i], M, N)" in odd


def test_fp32_linears_take_cublaslt_and_batched_matmuls_keep_qjcs_kernel():
    k, g = _plain_linear("f32[64,64]", "f32[128,64]", blaslt=True)
    assert k.notes["blaslt"] and "g.ab_type = 0;" in k.code  # f32 in, exact f32 accumulation (no TF32)
    assert "gemm_simt" in k.code  # the fallback
    q = g.add_input("q", parse_type("bf16[2,4,16,32]"))
    kk = g.add_input("kk", parse_type("bf16[2,4,32,16]"))
    s = g.op("matmul", q, kk)
    batched = gemm_kernel(_ctx(g, {q, kk, s}, blaslt=True), s.producer, [s]).finalize()
    assert not batched.notes["blaslt"]  # batched products keep qjc's kernel


@pytest.mark.parametrize("bad", [None, "positions_dtype", "positions_shape", "batch"])
def test_the_generation_loop_takes_only_inputs_it_can_fill(bad):
    """The native loop uploads [batch, seq] int64 tokens and positions: a decoder whose inputs differ (an i32
    position, a [seq] one, another batch) is refused at build time, not overrun on the device."""
    from types import SimpleNamespace

    from qjc.backends.cuda.codegen import llm_loop_facts

    g = Graph("dec")
    g.add_symbol("seq", 1, 64)
    batch = 3 if bad == "batch" else 2
    g.add_input("tokens", parse_type(f"i64[{batch},seq]"))
    g.add_input("positions", parse_type({"positions_dtype": "i32[2,seq]", "positions_shape": "i64[seq]"}.get(
        bad, "i64[2,seq]")))
    table = g.add_input("block_table", parse_type("i32[2,4]"))
    g.set_outputs(g.op("cast", table, to=parse_type("f32[1]").dtype))
    g.meta["llm"] = {"batch": 2, "max_seq": 64, "vocab_size": 4,
                     "kv_cache": {"layout": "paged", "block_size": 16, "max_blocks_per_seq": 4, "num_blocks": 8}}
    program = SimpleNamespace(graph=g)
    if bad is None:
        facts = llm_loop_facts(program)
        assert (facts["tokens_input"], facts["positions_input"], facts["table_input"]) == (0, 1, 2)
        assert facts["input_dims"][:2] == [["2", "seq"], ["2", "seq"]]
    else:
        with pytest.raises(BackendError, match="i64"):
            llm_loop_facts(program)
