"""The npu_stub reference backend: compile -> artifact -> load -> run, checked against the
interpreter and an independent numpy float64 reference."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import qjc
from qjc.backends.base import get_backend
from qjc.backends.npu_stub import NpuStubBackend, NpuStubOptions
from qjc.backends.npu_stub.backend import DEVICE_OPS, PROGRAM_FILE
from qjc.errors import ArtifactError, BackendError, UnsupportedOpsError
from qjc.ir.dims import SymExpr
from qjc.ir.dtypes import f16, f32
from qjc.ir.graph import Graph
from qjc.ir.interpreter import run
from qjc.ir.ops.registry import REGISTRY, _load_families
from qjc.ir.types import TensorType

RNG_SEED = 20240607


def elementwise_graph(rng: np.random.Generator, dtype=f32) -> tuple[Graph, dict[str, np.ndarray]]:
    """out = relu(x * w + b) + exp(-|x|) * scale; also returns tanh(y) as a second output."""
    g = Graph("ew")
    g.add_symbol("batch", 1, 32)
    x = g.add_input("x", TensorType((SymExpr.symbol("batch"), 16), dtype))
    y = g.add_input("y", TensorType((SymExpr.symbol("batch"), 16), dtype))
    consts = {"w": rng.standard_normal(16), "b": rng.standard_normal(16),
              "scale": rng.standard_normal((1, 16))}
    w, b, scale = (g.add_constant(k, v.astype(dtype.np_dtype)) for k, v in consts.items())
    lin = g.op("add", g.op("mul", x, w), b)
    decay = g.op("mul", g.op("exp", g.op("neg", g.op("abs", x))), scale)
    g.set_outputs(g.op("add", g.op("relu", lin), decay, name="out"), g.op("tanh", y, name="ty"))
    return g, consts


def numpy_reference(x: np.ndarray, y: np.ndarray, c: dict[str, np.ndarray]) -> list[np.ndarray]:
    x, y = x.astype(np.float64), y.astype(np.float64)
    return [np.maximum(x * c["w"] + c["b"], 0.0) + np.exp(-np.abs(x)) * c["scale"], np.tanh(y)]


@pytest.mark.parametrize("batch", [1, 5])
def test_compile_load_run_matches_interpreter_and_float64(tmp_path, batch):
    rng = np.random.default_rng(RNG_SEED + batch)
    graph, consts = elementwise_graph(rng)
    # constants are rounded to f32 in the graph; the reference uses the same rounded values
    consts = {k: v.astype(np.float32).astype(np.float64) for k, v in consts.items()}
    engine = qjc.compile(graph, out_dir=tmp_path / "art")
    loaded = qjc.load(tmp_path / "art")  # a second, independent load of the artifact
    x = rng.standard_normal((batch, 16)).astype(np.float32)
    y = rng.standard_normal((batch, 16)).astype(np.float32)
    got = engine(x, y)
    again = loaded(x, y)
    oracle = run(graph, [x, y])
    want = numpy_reference(x, y, consts)
    for g_, a_, o_, w_ in zip(got, again, oracle, want, strict=True):
        assert g_.dtype == np.float32 and g_.shape == (batch, 16)
        np.testing.assert_array_equal(g_, a_)
        np.testing.assert_array_equal(g_, o_)
        np.testing.assert_allclose(g_, w_, rtol=1e-5, atol=1e-6)


def test_f16_graph_runs(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    graph, consts = elementwise_graph(rng, dtype=f16)
    consts = {k: v.astype(np.float16).astype(np.float64) for k, v in consts.items()}
    engine = qjc.compile(graph, out_dir=tmp_path / "art")
    x = rng.standard_normal((3, 16)).astype(np.float16)
    y = rng.standard_normal((3, 16)).astype(np.float16)
    out, ty = engine(x, y)
    assert out.dtype == np.float16
    want_out, want_ty = numpy_reference(x, y, consts)
    np.testing.assert_allclose(out.astype(np.float64), want_out, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(ty.astype(np.float64), want_ty, rtol=1e-2, atol=1e-3)


def test_device_program_describes_the_ops(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    graph, _ = elementwise_graph(rng)
    engine = qjc.compile(graph, out_dir=tmp_path / "art", optimize=False, cores=4)
    program = json.loads((engine.path / PROGRAM_FILE).read_text())
    assert program["cores"] == 4 and program["inputs"] == ["x", "y"] and program["outputs"] == ["out", "ty"]
    assert [i["op"] for i in program["instructions"]] == [n.op for n in graph.nodes]
    assert all(i["unit"] == "device" for i in program["instructions"])
    assert engine.manifest["arch"] == ["npu_stub-sim-v1"]
    assert engine.manifest["target_options"]["cores"] == 4


def _graph_with_sin() -> Graph:
    g = Graph("trig")
    x = g.add_input("x", TensorType((4,), f32))
    g.set_outputs(g.op("add", g.op("sin", x), x, name="out"))
    return g


def test_unsupported_op_is_refused_with_its_place(tmp_path):
    with pytest.raises(UnsupportedOpsError) as err:
        qjc.compile(_graph_with_sin(), out_dir=tmp_path / "art")
    assert "sin" in str(err.value) and "npu_stub" in str(err.value)
    assert not (tmp_path / "art").exists()


def test_host_fallback_runs_unsupported_ops_on_the_host(tmp_path):
    engine = qjc.compile(_graph_with_sin(), out_dir=tmp_path / "art", host_fallback=True)
    assert engine.manifest["backend"]["host_ops"] == ["sin"]
    program = json.loads((engine.path / PROGRAM_FILE).read_text())
    assert [(i["op"], i["unit"]) for i in program["instructions"]] == [("sin", "host"), ("add", "device")]
    x = np.random.default_rng(RNG_SEED).standard_normal(4).astype(np.float32)
    np.testing.assert_allclose(engine(x), np.sin(x.astype(np.float64)) + x, rtol=1e-6)


def test_capability_table_names_real_ops():
    _load_families()
    listed = [op for ops in DEVICE_OPS.values() for op in ops]
    assert not [op for op in listed if op not in REGISTRY]
    for family, ops in DEVICE_OPS.items():
        assert all(REGISTRY[op].family == family for op in ops), family
    caps = NpuStubBackend().capabilities(NpuStubOptions())
    assert "sin" not in caps.ops and "matmul" in caps.ops
    assert caps.accepts_dtype("f16") and not caps.accepts_dtype("bf16")


def test_registered_and_available():
    backend = get_backend("npu_stub")
    assert isinstance(backend, NpuStubBackend)
    assert backend.available()[0]
    with pytest.raises(BackendError, match="unknown option"):
        qjc.compile(_graph_with_sin(), flux_capacitor=True)


def _rewrite_with_hash(art, rel: str, text: str) -> None:
    """Edit a file and fix its manifest hash, as a forger would: only the program check is left."""
    (art / rel).write_text(text)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["files"][rel] = hashlib.sha256(text.encode()).hexdigest()
    (art / "manifest.json").write_text(json.dumps(manifest))


def test_program_that_does_not_match_the_graph_is_refused(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    graph, _ = elementwise_graph(rng)
    art = qjc.compile(graph, out_dir=tmp_path / "art", optimize=False).path
    program = json.loads((art / PROGRAM_FILE).read_text())
    program["instructions"][0]["op"] = "sub"
    _rewrite_with_hash(art, PROGRAM_FILE, json.dumps(program))
    with pytest.raises(ArtifactError, match="instruction 0 .* does not match graph.qir"):
        qjc.load(art)
    program["instructions"][0]["op"] = graph.nodes[0].op
    program["instructions"] = program["instructions"][:-1]
    _rewrite_with_hash(art, PROGRAM_FILE, json.dumps(program))
    with pytest.raises(ArtifactError, match="instructions for"):
        qjc.load(art)


def test_wrong_target_is_refused(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    art = qjc.compile(elementwise_graph(rng)[0], out_dir=tmp_path / "art").path
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["target"] = "elsewhere"
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendError, match="unknown target 'elsewhere'"):
        qjc.load(art)
    with pytest.raises(BackendError, match="is for target elsewhere"):
        NpuStubBackend().load(art)


def test_compile_without_out_dir_cleans_up(tmp_path):
    import gc

    rng = np.random.default_rng(RNG_SEED)
    engine = qjc.compile(elementwise_graph(rng)[0])
    path = engine.path
    assert (path / "manifest.json").is_file()
    x = rng.standard_normal((2, 16)).astype(np.float32)
    assert len(engine(x, x)) == 2
    del engine
    gc.collect()
    assert not path.exists()


def test_compile_does_not_modify_the_callers_graph(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    graph, _ = elementwise_graph(rng)
    from qjc.ir.printer import print_graph

    before = print_graph(graph)
    g = Graph("foldable")
    x = g.add_input("x", TensorType((2,), f32))
    c = g.add_constant("c", np.ones(2, np.float32))
    g.set_outputs(g.op("add", x, g.op("exp", c)))
    before_foldable = print_graph(g)
    qjc.compile(graph, out_dir=tmp_path / "a")
    qjc.compile(g, out_dir=tmp_path / "b")
    assert print_graph(graph) == before and print_graph(g) == before_foldable


def test_onnx_model_compiles_for_npu_stub(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(RNG_SEED)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["z"]),
             helper.make_node("Tanh", ["z"], ["t"]), helper.make_node("Softmax", ["t"], ["y"], axis=-1)]
    # a static batch: a dim_param's default range (up to 2**31-1) is beyond npu_stub's largest dim
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    engine = qjc.compile(path, target="npu_stub", out_dir=tmp_path / "tiny.qjc")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for _ in range(2):
        x = rng.standard_normal((3, 8)).astype(np.float32)
        got = engine(x)
        got = got[0] if isinstance(got, list) else got
        np.testing.assert_allclose(got, session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_torch_module_compiles_for_npu_stub(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    engine = qjc.compile(model, (torch.randn(3, 8),), target="npu_stub", out_dir=tmp_path / "mlp")
    x = torch.randn(3, 8)
    with torch.no_grad():
        want = model.double()(x.double()).numpy()
    got = engine(x.numpy())
    got = got[0] if isinstance(got, list) else got
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
