"""The cpu backend's contract: discovery, options, capabilities, unsupported-op errors, what the
artifact holds (weights as packed parameters, not in the library), integrity checks before the
library is loaded, the CPU-feature check, and the tensor fast path."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import qjc
from qjc.api import build, load
from qjc.backends.base import get_backend
from qjc.backends.cpu import CpuBackend, CpuOptions
from qjc.errors import ArtifactError, BackendError, QJCError, UnsupportedOpsError
from qjc.ir.dims import SymExpr
from qjc.ir.dtypes import bf16, f32
from qjc.ir.graph import Graph
from qjc.ir.interpreter import run
from qjc.ir.types import TensorType

N = SymExpr.symbol("n")
_R = np.random.default_rng(2)
W = _R.standard_normal((256, 512)).astype(np.float32)  # 512 KB: bigger than the library
B = _R.standard_normal(256).astype(np.float32)


def mlp_graph() -> Graph:
    g = Graph("mlp")
    g.add_symbol("n", 1, 1024)
    x = g.add_input("x", TensorType((N, 512), f32))
    h = g.op("linear", x, g.add_constant("w", W), g.add_constant("b", B))
    y = g.op("silu", h)
    g.set_outputs(g.op("sum", y, axes=(1,), keepdims=True), h)
    return g


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("cpu_backend") / "mlp.qjc"
    build(mlp_graph(), out, target="cpu", optimize=False)
    return out


def test_backend_is_discovered_and_available() -> None:
    backend = get_backend("cpu")
    assert isinstance(backend, CpuBackend)
    ok, why = backend.available()
    assert ok and "TVM" in why


def test_options_parse_validate_and_hash() -> None:
    opts = CpuOptions.from_strings({"cpu": "native", "threads": "2"})
    assert opts == CpuOptions(cpu="native", threads=2)
    assert opts.stable_hash() != CpuOptions().stable_hash()
    assert CpuOptions().cpu == "x86-64-v3" and CpuOptions().threads == 0
    with pytest.raises(QJCError, match="threads"):
        CpuOptions.from_kwargs(threads=-1)
    with pytest.raises(QJCError, match="unknown option"):
        CpuOptions.from_kwargs(cores=2)


def test_capabilities_name_ops_dtypes_and_fused_kinds() -> None:
    caps = CpuBackend().capabilities(CpuOptions())
    for op in ("linear", "sdpa", "conv2d", "index_copy", "cumsum", "gather_elements"):
        assert caps.accepts_op(op)
    assert caps.accepts_op("dequantize") and caps.accepts_dtype("q4g32m_f16")
    assert caps.accepts_dtype("f32") and caps.accepts_dtype("i64") and caps.accepts_dtype("bool")
    assert not caps.accepts_dtype("bf16")
    assert {"gemm", "attention", "rope", "swiglu", "geglu", "softmax"} <= caps.fused_kinds


def test_unsupported_ops_are_all_listed_before_building(tmp_path) -> None:
    g = Graph("bad")
    x = g.add_input("x", TensorType((4,), bf16))
    g.set_outputs(g.op("exp", x), g.op("neg", x))
    with pytest.raises(UnsupportedOpsError) as err:
        build(g, tmp_path / "bad.qjc", target="cpu", optimize=False)
    assert "exp" in str(err.value) and "neg" in str(err.value) and "bf16" in str(err.value)
    assert not (tmp_path / "bad.qjc").exists()


def test_artifact_records_packed_weights_and_keeps_them_out_of_the_library(artifact) -> None:
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["target"] == "cpu"
    backend = manifest["backend"]
    params = {p["constant"]: p for p in backend["params"]}
    rows, cols = backend["gemm_tile"]
    assert params["w"]["layout"] == "nk"
    assert params["w"]["shape"] == [-(-256 // cols), 512, cols]
    assert params["b"]["layout"] == "plain"
    assert (artifact / "model.so").stat().st_size < (artifact / "weights.safetensors").stat().st_size
    assert "model.so" in manifest["files"]


@pytest.mark.parametrize("rows", [7, 301])  # one partial row block; two blocks of the GEMM's row tiling
def test_engine_runs_and_the_tensor_path_agrees(artifact, rows: int) -> None:
    engine = load(artifact)
    graph = mlp_graph()
    x = np.random.default_rng(4).standard_normal((rows, 512)).astype(np.float32)
    got = engine(x)
    for g, w in zip(got, run(graph, [x]), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    fast = engine.run_tensors(engine.to_tensor(x))
    np.testing.assert_array_equal(fast[1].numpy(), got[1])
    with pytest.raises(QJCError, match="expected dtype"):
        engine(x.astype(np.float64))


def test_rebuilds_give_identical_weights_ir_and_metadata(artifact, tmp_path) -> None:
    # model.so is usually byte-identical too, but not always: TVM's generated VM shape function
    # (__tvm_ffi_shape_func) occasionally comes out one byte different, so it is not compared here
    again = tmp_path / "again.qjc"
    build(mlp_graph(), again, target="cpu", optimize=False)
    first = json.loads((artifact / "manifest.json").read_text())
    second = json.loads((again / "manifest.json").read_text())
    for name in ("graph.qir", "weights.safetensors"):
        assert first["files"][name] == second["files"][name]
    first["files"].pop("model.so"), second["files"].pop("model.so")
    assert first == second


def test_a_modified_library_is_refused_before_loading(artifact, tmp_path) -> None:
    copy = tmp_path / "copy.qjc"
    shutil.copytree(artifact, copy)
    lib = copy / "model.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model.so does not match"):
        qjc.load(copy)


def test_an_artifact_for_a_cpu_this_host_lacks_is_refused(artifact, tmp_path) -> None:
    copy = tmp_path / "future.qjc"
    shutil.copytree(artifact, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["backend"]["cpu_features"] = manifest["backend"]["cpu_features"] + ["avx1024_imaginary"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendError, match="avx1024_imaginary"):
        qjc.load(copy)


def test_native_cpu_and_thread_count(tmp_path) -> None:
    out = tmp_path / "native.qjc"
    build(mlp_graph(), out, target="cpu", optimize=False, cpu="native", threads=1)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"]["cpu"] != "native"  # resolved to the host's LLVM CPU name
    assert manifest["target_options"] == {"cpu": "native", "threads": 1}
    engine = load(out)
    assert engine.threads == 1
    x = np.random.default_rng(5).standard_normal((3, 512)).astype(np.float32)
    np.testing.assert_allclose(engine(x)[1], run(mlp_graph(), [x])[1], rtol=1e-4, atol=1e-4)


def test_a_symbol_seen_only_inside_an_input_dim_is_bound_from_it(tmp_path) -> None:
    g = Graph("shifted")
    g.add_symbol("n", 1, 8)
    y = g.add_input("y", TensorType((N + 1, 4), f32))
    g.set_outputs(g.op("reshape", g.op("neg", y), shape=(4 * N + 4,)))
    engine = build_and_load(g, tmp_path / "shifted.qjc")
    x = np.random.default_rng(6).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(engine(x), -x.reshape(-1))


def build_and_load(graph: Graph, out):
    build(graph, out, target="cpu", optimize=False)
    return load(out)


def _activation_graph(activation: str, w: np.ndarray) -> Graph:
    g = Graph("act")
    g.add_symbol("n", 1, 64)
    x = g.add_input("x", TensorType((N, 16), f32))
    g.set_outputs(g.op(activation, g.op("linear", x, g.add_constant("w", w))))
    return g


def test_an_artifact_rebuilt_at_the_same_path_runs_its_own_library(tmp_path) -> None:
    """The dynamic loader returns an already-loaded library for a path it has seen, even once the file
    there was replaced: a second model built into the same directory must still run its own code."""
    rng = np.random.default_rng()
    x = rng.standard_normal((3, 16)).astype(np.float32)
    out = tmp_path / "same.qjc"
    engines = []
    for activation, ref in (("relu", lambda h: np.maximum(h, 0)), ("tanh", np.tanh)):
        w = rng.standard_normal((8, 16)).astype(np.float32)
        build(_activation_graph(activation, w), out, target="cpu", optimize=False)
        engine = load(out)
        engines.append(engine)  # keep the first library loaded, as a long-running process would
        got = engine(x)
        got = got[0] if isinstance(got, list) else got
        np.testing.assert_allclose(got, ref(x.astype(np.float64) @ w.T.astype(np.float64)), rtol=1e-4, atol=1e-5,
                                   err_msg=activation)
