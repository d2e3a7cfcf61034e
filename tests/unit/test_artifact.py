"""The artifact format: safetensors I/O (checked against the `safetensors` package), deterministic
writes, atomic replacement, integrity checks and format versioning, and engine input checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import qjc
from qjc import safetensors_io
from qjc.artifact import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    Signature,
    attach_constants,
    constants_to_tensors,
    read_manifest,
    verify_artifact,
    write_artifact,
)
from qjc.backends.npu_stub import NpuStubOptions
from qjc.errors import ArtifactError, QJCError
from qjc.ir.dims import SymExpr
from qjc.ir.dtypes import QuantScheme, f16, f32
from qjc.ir.graph import Graph
from qjc.ir.types import TensorType

RNG_SEED = 1234

ALL_DTYPES = {
    "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F64": np.float64, "I64": np.int64, "I32": np.int32, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def _random(rng: np.random.Generator, dtype, shape) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        lo, hi = max(info.min, -1000), min(info.max, 1000)
        return rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)
    return np.asarray((rng.standard_normal(shape) * 3).astype(dtype))


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


# ---- safetensors ----------------------------------------------------------------------------------


def test_safetensors_roundtrip_every_dtype(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    shapes = [(3, 5), (7,), (), (0, 4), (2, 3, 2)]
    tensors = {f"t_{code}_{i}": _random(rng, dt, shapes[i % len(shapes)])
               for code, dt in ALL_DTYPES.items() for i in range(2)}
    path = tmp_path / "w.safetensors"
    safetensors_io.save_file(tensors, path, metadata={"origin": "test"})
    for use_mmap in (False, True):
        back = safetensors_io.load_file(path, use_mmap=use_mmap)
        assert sorted(back) == sorted(tensors)
        for name, arr in tensors.items():
            assert back[name].dtype == arr.dtype and back[name].shape == arr.shape, name
            assert _bits(back[name]) == _bits(arr), name
    assert safetensors_io.read_metadata(path) == {"origin": "test"}
    header = safetensors_io.SafetensorsFile(path)
    assert {header.entries[n][0] for n in header.entries} == {np.dtype(d) for d in ALL_DTYPES.values()}


def test_safetensors_layout_is_deterministic_and_aligned(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    tensors = {"b": _random(rng, np.int8, (5,)), "a": _random(rng, np.float64, (3,)),
               "c": _random(rng, np.float16, (3,)), "d": _random(rng, np.float32, (1,))}
    first = safetensors_io.serialize(tensors)
    again = safetensors_io.serialize(dict(reversed(list(tensors.items()))))
    assert first == again
    n = int.from_bytes(first[:8], "little")
    assert (8 + n) % 8 == 0
    header = json.loads(first[8:8 + n])
    for name, arr in tensors.items():
        begin, end = header[name]["data_offsets"]
        assert (8 + n + begin) % arr.dtype.itemsize == 0, name
    # contiguous, no gaps: the reference implementation requires it
    spans = sorted(tuple(e["data_offsets"]) for e in header.values())
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert spans[-1][1] == len(first) - 8 - n


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.int64])
def test_safetensors_compatible_with_reference_package(tmp_path, dtype):
    st_numpy = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(RNG_SEED)
    tensors = {"weight": _random(rng, dtype, (4, 6)), "bias": _random(rng, dtype, (6,)),
               "scalar": _random(rng, dtype, ())}
    ours = tmp_path / "ours.safetensors"
    theirs = tmp_path / "theirs.safetensors"
    safetensors_io.save_file(tensors, ours)
    st_numpy.save_file(tensors, str(theirs))
    for name, arr in st_numpy.load_file(str(ours)).items():  # they read ours
        assert arr.dtype == tensors[name].dtype and _bits(arr) == _bits(tensors[name])
    for name, arr in safetensors_io.load_file(theirs).items():  # we read theirs
        assert arr.dtype == tensors[name].dtype and _bits(arr) == _bits(tensors[name])


def test_safetensors_bad_files_name_the_file(tmp_path):
    good = safetensors_io.serialize({"x": np.arange(4, dtype=np.float32)})
    n = int.from_bytes(good[:8], "little")
    cases = {
        "short.safetensors": good[:5],
        "hugeheader.safetensors": (10**12).to_bytes(8, "little") + good[8:],
        "notjson.safetensors": n.to_bytes(8, "little") + b"{" * n + good[8 + n:],
        "truncated.safetensors": good[:-4],
    }
    header = json.loads(good[8:8 + n])
    header["x"]["data_offsets"] = [0, 4096]
    text = json.dumps(header).encode()
    cases["offsets.safetensors"] = len(text).to_bytes(8, "little") + text + good[8 + n:]
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ArtifactError) as err:
            safetensors_io.load_file(path)
        assert name in str(err.value), name


def test_safetensors_refuses_unsupported_dtype():
    with pytest.raises(ArtifactError, match="cannot hold"):
        safetensors_io.serialize({"c": np.zeros(2, np.complex64)})


# ---- artifact writing -------------------------------------------------------------------------------


def small_graph(seed: int = RNG_SEED, dtype=f32) -> Graph:
    rng = np.random.default_rng(seed)
    g = Graph("small")
    g.add_symbol("batch", 1, 16)
    x = g.add_input("x", TensorType((SymExpr.symbol("batch"), 8), dtype))
    w = g.add_constant("w", rng.standard_normal((8,)).astype(dtype.np_dtype))
    big = g.add_constant("big", rng.standard_normal((4, 8)).astype(dtype.np_dtype))
    y = g.op("relu", g.op("add", g.op("mul", x, w), g.op("exp", x)), name="y")
    g.set_outputs(y, g.op("mul", big, big, name="sq"))
    return g


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _write(path: Path, graph: Graph, writer=None):
    return write_artifact(path, graph, "npu_stub", NpuStubOptions(), writer)


def test_artifact_bytes_identical_for_identical_inputs(tmp_path):
    def writer(d: Path) -> dict:
        (d / "kernels").mkdir()
        (d / "kernels" / "k.bin").write_bytes(b"\x00\x01kernel")
        return {"arch": ["sim"], "entry": "kernels/k.bin"}

    a = _write(tmp_path / "a", small_graph(), writer)
    b = _write(tmp_path / "b", small_graph(), writer)  # a separately built, equal graph
    fa, fb = _files(a.path), _files(b.path)
    assert sorted(fa) == sorted([MANIFEST_FILE, "graph.qir", "kernels/k.bin", "weights.safetensors"])
    assert fa == fb
    manifest = json.loads(fa[MANIFEST_FILE])
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["arch"] == ["sim"] and manifest["backend"] == {"entry": "kernels/k.bin"}
    assert set(manifest["files"]) == {"graph.qir", "kernels/k.bin", "weights.safetensors"}
    assert "time" not in fa[MANIFEST_FILE].decode().lower()
    assert str(tmp_path) not in fa[MANIFEST_FILE].decode()
    # and writing over an existing artifact gives the same bytes again
    _write(tmp_path / "a", small_graph(), writer)
    assert _files(tmp_path / "a") == fb


def test_artifact_signature_records_symbolic_dims(tmp_path):
    art = _write(tmp_path / "a", small_graph())
    sig = Signature.from_json(art.manifest["signature"])
    assert [(s.name, s.dtype, s.shape) for s in sig.inputs] == [("x", "f32", ("batch", 8))]
    assert [(s.name, s.shape) for s in sig.outputs] == [("y", ("batch", 8)), ("sq", (4, 8))]
    assert sig.symbol_ranges == {"batch": (1, 16)}


def test_artifact_graph_and_weights_load_back(tmp_path):
    graph = small_graph()
    art = verify_artifact(_write(tmp_path / "a", graph).path)
    back = art.load_graph()
    for name, const in graph.constants.items():
        assert _bits(back.constants[name].data) == _bits(const.data)


def test_failed_write_keeps_previous_artifact(tmp_path):
    out = tmp_path / "art"
    _write(out, small_graph())
    before = _files(out)

    def exploding(d: Path) -> dict:
        (d / "half_written.bin").write_bytes(b"partial")
        raise RuntimeError("backend crashed mid-lowering")

    with pytest.raises(RuntimeError, match="crashed"):
        _write(out, small_graph(seed=99), exploding)
    assert _files(out) == before
    verify_artifact(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temporary directories left


def test_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(ArtifactError):
        _write(tmp_path / "art", small_graph(), lambda d: {"not_json": object()})
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_a_directory_that_is_not_an_artifact(tmp_path):
    out = tmp_path / "mydata"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not a qjc artifact"):
        _write(out, small_graph())
    assert (out / "precious.txt").read_text() == "keep me"


def test_graph_constant_without_data_is_refused(tmp_path):
    g = Graph("nodata")
    x = g.add_input("x", TensorType((4,), f32))
    c = g.add_constant("c", None, TensorType((4,), f32))
    g.set_outputs(g.op("add", x, c))
    with pytest.raises(ArtifactError, match="%c .*has no data"):
        _write(tmp_path / "a", g)


def test_quantized_constants_roundtrip_through_weights():
    from qjc.ir.quant import quantize

    rng = np.random.default_rng(RNG_SEED)
    for scheme in (QuantScheme(4, 32, False, f16), QuantScheme(8, 0, True, f32)):
        g = Graph("q")
        q = quantize(rng.standard_normal((8, 64)).astype(np.float32), scheme)
        g.add_constant("wq", q, TensorType((8, 64), scheme.dtype))
        g.set_outputs(g.add_input("x", TensorType((2,), f32)))
        tensors = constants_to_tensors(g)
        assert ("wq::zeros" in tensors) == (not scheme.symmetric)
        fresh = Graph("q")
        fresh.add_constant("wq", None, TensorType((8, 64), scheme.dtype))
        attach_constants(fresh, tensors)
        back = fresh.constants["wq"].data
        assert _bits(back.data) == _bits(q.data) and _bits(back.scales) == _bits(q.scales)


def test_attach_constants_reports_mismatches():
    g = Graph("m")
    g.add_constant("a", None, TensorType((4,), f32))
    g.add_constant("b", None, TensorType((2,), f32))
    with pytest.raises(ArtifactError) as err:
        attach_constants(g, {"a": np.zeros(5, np.float32), "zzz": np.zeros(1, np.float32)}, source="w.st")
    text = str(err.value)
    assert "w.st" in text and "%a: declared f32[4]" in text and "%b: missing" in text and "zzz" in text


# ---- verification ---------------------------------------------------------------------------------------


def test_tampered_file_is_named_before_loading(tmp_path):
    art = qjc.compile(small_graph(), out_dir=tmp_path / "a").path
    weights = art / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as err:
        qjc.load(art)
    assert "weights.safetensors does not match its SHA-256" in str(err.value)


def test_missing_file_is_named(tmp_path):
    art = _write(tmp_path / "a", small_graph()).path
    (art / "graph.qir").unlink()
    with pytest.raises(ArtifactError, match="graph.qir is missing"):
        verify_artifact(art)


def test_newer_format_version_is_refused_clearly(tmp_path):
    art = _write(tmp_path / "a", small_graph()).path
    manifest = json.loads((art / MANIFEST_FILE).read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    manifest["qjc_version"] = "9.0.0"
    (art / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError) as err:
        read_manifest(art)
    text = str(err.value)
    assert f"format version {FORMAT_VERSION + 1}" in text and "qjc 9.0.0" in text
    assert f"reads format version {FORMAT_VERSION} only" in text
    with pytest.raises(ArtifactError):
        qjc.load(art)


@pytest.mark.parametrize("bad_name", ["../outside.bin", "/etc/passwd", "a/../../x", "sub\\..\\x"])
def test_file_list_may_not_leave_the_directory(tmp_path, bad_name):
    art = _write(tmp_path / "a", small_graph()).path
    manifest = json.loads((art / MANIFEST_FILE).read_text())
    manifest["files"][bad_name] = "0" * 64
    (art / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="points outside"):
        verify_artifact(art)


def test_symlinked_file_is_refused(tmp_path):
    art = _write(tmp_path / "a", small_graph()).path
    outside = tmp_path / "elsewhere.qir"
    os.replace(art / "graph.qir", outside)
    (art / "graph.qir").symlink_to(outside)
    with pytest.raises(ArtifactError, match="symbolic link"):
        verify_artifact(art)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(ArtifactError, match="has no manifest.json"):
        read_manifest(tmp_path)


# ---- engine input checks ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return qjc.compile(small_graph(), out_dir=tmp_path_factory.mktemp("eng") / "art")


def test_engine_metadata(engine):
    assert engine.path.name == "art" and engine.manifest["target"] == "npu_stub"
    assert [s.name for s in engine.signature.inputs] == ["x"]


def test_engine_input_count(engine):
    with pytest.raises(QJCError, match=r"takes 1 input\(s\) \(x: f32\[batch,8\]\), got 2"):
        engine(np.zeros((2, 8), np.float32), np.zeros((2, 8), np.float32))


def test_engine_input_dtype(engine):
    with pytest.raises(QJCError, match="input 'x': expected dtype f32 .*got float64"):
        engine(np.zeros((2, 8)))


def test_engine_input_shape(engine):
    with pytest.raises(QJCError, match=r"input 'x': expected shape f32\[batch,8\], got \[2, 7\]"):
        engine(np.zeros((2, 7), np.float32))
    with pytest.raises(QJCError, match="expected rank 2"):
        engine(np.zeros((8,), np.float32))
    with pytest.raises(QJCError, match="batch=17 is outside the range 1..16"):
        engine(np.zeros((17, 8), np.float32))


def test_engine_keyword_inputs(engine):
    x = np.random.default_rng(RNG_SEED).standard_normal((3, 8)).astype(np.float32)
    by_pos = engine(x)
    by_name = engine(x=x)
    assert all(_bits(a) == _bits(b) for a, b in zip(by_pos, by_name, strict=True))
    with pytest.raises(QJCError, match=r"unknown input\(s\) \['y'\].*missing input\(s\) \['x'\]"):
        engine(y=x)


def test_engine_consistent_symbols(tmp_path):
    g = Graph("two")
    g.add_symbol("n", 1, 8)
    n = SymExpr.symbol("n")
    a = g.add_input("a", TensorType((n,), f32))
    b = g.add_input("b", TensorType((n + 1,), f32))
    g.set_outputs(g.op("exp", a), g.op("exp", b))
    eng = qjc.compile(g, out_dir=tmp_path / "a")
    outs = eng(np.ones(3, np.float32), np.ones(4, np.float32))
    assert [o.shape for o in outs] == [(3,), (4,)]
    with pytest.raises(QJCError, match=r"axis 0 is n\+1 = 4, got 5"):
        eng(np.ones(3, np.float32), np.ones(5, np.float32))
