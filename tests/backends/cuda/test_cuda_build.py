"""Whole models through the standard pipeline into cuda artifacts, compiled with nvcc for sm_80 and
sm_90a on a machine without a GPU; the nvcc driver's cache and its errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from qjc.backends.cuda.nvcc import NvccBuilder, Unit, find_nvcc
from qjc.errors import BackendError

NVCC = find_nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed (building cuda artifacts needs it)")
ARCHS = ("sm_80", "sm_90a")


class SmallCNN:
    @staticmethod
    def build():
        import torch

        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
                self.bn1 = torch.nn.BatchNorm2d(8)
                self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2)
                self.pool = torch.nn.MaxPool2d(2)
                self.fc = torch.nn.Linear(16 * 4 * 4, 10)

            def forward(self, x):
                x = self.pool(torch.relu(self.bn1(self.conv1(x))))
                x = torch.nn.functional.avg_pool2d(torch.relu(self.conv2(x)), 1)
                return torch.log_softmax(self.fc(x.flatten(1)), dim=-1)

        torch.manual_seed(0)
        return Net().eval(), (torch.randn(2, 3, 16, 16),)


def bert_like():
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                     vocab_size=100, max_position_embeddings=64)
    model = BertModel(cfg).eval()
    return model, (torch.randint(0, 100, (2, 16)), torch.ones(2, 16, dtype=torch.long))


def llama_like():
    import torch
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=100, max_position_embeddings=64, use_cache=False)
    inner = LlamaModel(cfg).eval().to(torch.bfloat16)

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = inner

        def forward(self, ids):
            return self.model(input_ids=ids, use_cache=False).last_hidden_state

    return Wrapper().eval(), (torch.randint(0, 100, (1, 16)),)


MODELS = {"cnn": (SmallCNN.build, "auto"), "bert": (bert_like, "fp16"), "llama": (llama_like, "auto")}


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> dict:
    """Each model compiled once per session (cache in the session's temp dir: every build is real)."""
    if NVCC is None:
        pytest.skip("nvcc is not installed")
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import os

    from qjc.api import build

    root = tmp_path_factory.mktemp("cuda_build")
    old = os.environ.get("QJC_CACHE_DIR")
    os.environ["QJC_CACHE_DIR"] = str(root / "cache")
    try:
        out = {}
        for name, (make, dtype) in MODELS.items():
            model, example = make()
            out[name] = build(model, root / f"{name}.qjc", target="cuda", example_inputs=example, archs=ARCHS,
                              dtype=dtype)
        return out
    finally:
        if old is None:
            os.environ.pop("QJC_CACHE_DIR", None)
        else:
            os.environ["QJC_CACHE_DIR"] = old


@needs_nvcc
@pytest.mark.parametrize("name", list(MODELS))
def test_model_compiles_for_sm80_and_sm90a(built, name):
    result = built[name]
    art = result.artifact
    manifest = art.manifest
    assert manifest["target"] == "cuda"
    assert manifest["arch"] == list(ARCHS)
    entries = manifest["backend"]
    lib = art.path / entries["library"]
    assert lib.is_file() and lib.stat().st_size > 10_000
    assert (art.path / entries["header"]).is_file()
    assert entries["kernels"] >= 3 and entries["steps"] >= entries["kernels"] - 1
    assert manifest["memory_plan_bytes"] > 0
    sources = sorted(p.name for p in (art.path / entries["sources"]).iterdir())
    assert "host_engine.cpp" in sources and any(s.startswith("kernels_") for s in sources)
    # every arch's machine code is in the library (no PTX to JIT)
    if shutil.which("cuobjdump"):
        import subprocess

        listing = subprocess.run(["cuobjdump", "--list-elf", str(lib)], capture_output=True, text=True).stdout
        for arch in ARCHS:
            assert arch in listing, listing


@needs_nvcc
def test_model_kernel_kinds(built):
    kinds = {name: built[name].artifact.manifest["backend"]["kernel_kinds"] for name in MODELS}
    assert "conv2d" in kinds["cnn"] and "pool2d" in kinds["cnn"]
    assert {"gemm", "attention", "row_reduce"} <= set(kinds["bert"])
    assert {"gemm", "attention", "row_reduce"} <= set(kinds["llama"])


@needs_nvcc
def test_loading_without_a_gpu_is_a_clear_error(built):
    try:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    except ImportError:
        pass
    import qjc

    with pytest.raises(BackendError, match="GPU|driver"):
        qjc.load(built["bert"].artifact.path)


@needs_nvcc
def test_manifest_records_compute_dtype(built):
    bert = built["bert"].artifact.manifest
    assert bert["backend"]["dtype"] == "fp16" and bert["backend"]["compute_dtype"] == "f16"
    # the signature stays the graph's: ids in, f32 hidden states out
    assert [i["dtype"] for i in bert["signature"]["inputs"]] == ["i64", "i64"]
    assert bert["signature"]["outputs"][0]["dtype"] == "f32"
    plan = json.loads((built["bert"].artifact.path / bert["backend"]["plan"]).read_text())
    assert plan["steps"] and plan["buffers"]


@needs_nvcc
def test_nvcc_cache_hits_and_failures(tmp_path):
    builder = NvccBuilder(NVCC, ("sm_80",), tmp_path)
    unit = Unit("k.cu", '#include "h.cuh"\n__global__ void k(float* x) { x[threadIdx.x] = ONE; }\n')
    lib = builder.build([unit], {"h.cuh": "#define ONE 1.0f\n"})
    assert lib.is_file() and builder.misses == 1
    again = NvccBuilder(NVCC, ("sm_80",), tmp_path)
    assert again.build([unit], {"h.cuh": "#define ONE 1.0f\n"}) == lib and again.misses == 0
    # a changed header is a different build
    other = NvccBuilder(NVCC, ("sm_80",), tmp_path)
    assert other.build([unit], {"h.cuh": "#define ONE 2.0f\n"}) != lib
    bad = Unit("bad.cu", "__global__ void k() { this is not cuda; }\n")
    with pytest.raises(BackendError) as err:
        NvccBuilder(NVCC, ("sm_80",), tmp_path).build([bad], {})
    text = str(err.value)
    assert "reproduce with:" in text and NVCC in text and "bad.cu" in text and "-gencode" in text
    assert "error" in text.lower()
    # the printed command works as printed: the source stays in the cache
    command = text.split("reproduce with:", 1)[1].strip()
    assert Path(command.split(" -c ", 1)[1].split()[0]).is_file()


def _tiny_llama_dir(tmp_path: Path) -> Path:
    """A one-layer GQA Llama with random weights, saved as a Hugging Face directory."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=96, vocab_size=128, max_position_embeddings=128)
    model_dir = tmp_path / "tiny"
    transformers.LlamaForCausalLM(cfg).save_pretrained(model_dir)
    return model_dir


@needs_nvcc
def test_paged_decoder_builds_with_the_native_loop(tmp_path):
    """A decoder for cuda gets a paged KV pool, its kernels and the generation loop's C ABI."""
    import json

    import qjc

    model_dir = _tiny_llama_dir(tmp_path)
    out = tmp_path / "tiny.qjc"
    qjc.api.build(str(model_dir), out, target="cuda", archs=("sm_90a",), dtype="bf16", max_seq=64, batch=3,
                  kv_block_size=8)
    manifest = json.loads((out / "manifest.json").read_text())
    kv = manifest["llm"]["kv_cache"]
    assert kv["layout"] == "paged" and kv["block_size"] == 8 and kv["num_blocks"] == 3 * 8
    assert [s["name"] for s in manifest["signature"]["inputs"][:3]] == ["tokens", "positions", "block_table"]
    assert manifest["kv_cache"]["dtype"] == "bf16"  # the pool as the engine holds it
    src = out / "cuda" / "src"
    kernels = "".join(p.read_text() for p in src.glob("kernels_*.cu"))
    # one in-place write of both pools per layer, inside the layer's attention (its own kernel, from the same
    # launcher, only for steps of several tokens); split-key attention merged by its last CTA
    assert kernels.count("__global__ void write(") == 1 and "new_at1(" in kernels
    assert "attend<true>" in kernels and "_kvw(p, S, stream)" in kernels
    assert "atomicAdd(&tickets" in kernels
    plan = json.loads((out / "cuda" / "plan.json").read_text())
    assert not any("paged_kv_write" in s["kernel"] for s in plan["steps"])
    assert sum("paged_attention" in s["kernel"] for s in plan["steps"]) == 1  # one layer
    assert "qjc_sample_tokens" in (src / "sampling.cu").read_text()
    host = (src / "host_engine.cpp").read_text()
    for fn in ("qjc_llm_add", "qjc_llm_step", "qjc_llm_poll", "qjc_llm_release", "cudaGraphLaunch"):
        assert fn in host
    symbols = subprocess.run(["nm", "-D", str(out / "cuda" / "libqjc_engine.so")], capture_output=True, text=True)
    if symbols.returncode == 0:
        assert "qjc_llm_step" in symbols.stdout


@needs_nvcc
def test_verify_of_a_quantized_cuda_decoder(tmp_path, capsys):
    """`qjc verify` on a cuda decoder (paged KV cache, int8 weights kept quantized): every quantized layer, and
    end to end the engine (on a GPU, sm_90) or else the artifact's final IR in the interpreter, fed one sequence
    in slot 0, against the float model; the report says which of the two ran."""
    from qjc.backends.cuda.backend import CudaBackend
    from qjc.cli import main

    gpu = CudaBackend().runnable()[0]
    model_dir = _tiny_llama_dir(tmp_path)
    out = tmp_path / "q8.qjc"
    assert main(["compile", str(model_dir), "--target", "cuda", "--arch", "sm_90a", "--max-seq", "32", "--batch", "2",
                 "--quant", "int8", "-O", "quant_kernels=true", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["verify", str(out), "--against", str(model_dir)]) == 0
    text = capsys.readouterr().out
    assert "8 quantized layers" in text  # the layer's 7 linears (merged ones reported per part) and lm_head
    if gpu:
        assert "end to end: ran the engine" in text
    else:
        assert "final IR in the interpreter" in text and "cuda kernels are not checked" in text
    rel = float(text.split("output 0 relative error ")[1].split()[0])
    assert 0 < rel < 0.05  # int8 per channel: close to float, not identical


@needs_nvcc
def test_in_place_cache_write_refuses_a_pool_read_elsewhere(tmp_path):
    """paged_kv_write updates its pool's buffer in place: a graph that also reads the old pool is
    refused by name instead of computing from overwritten data."""
    import qjc
    from qjc.errors import UnsupportedOpsError
    from qjc.ir import Graph
    from qjc.ir.types import parse_type

    g = Graph("reuse")
    pool = g.add_input("pool", parse_type("f32[4,2,8,16]"))
    table = g.add_input("table", parse_type("i32[1,4]"))
    pos = g.add_input("pos", parse_type("i64[1,1]"))
    new = g.add_input("new", parse_type("f32[1,2,1,16]"))
    q = g.add_input("q", parse_type("f32[1,2,1,16]"))
    written = g.op("paged_kv_write", pool, table, pos, new)
    old = g.op("paged_attention", q, pool, pool, table, pos)  # reads the pool as it was
    g.set_outputs(written, old)
    with pytest.raises(UnsupportedOpsError, match="writes %pool in place"):
        qjc.api.build(g, tmp_path / "reuse.qjc", target="cuda", archs=("sm_90a",))


@needs_nvcc
def test_engine_opens_cublaslt_and_resolves_every_entry_point(tmp_path):
    """The engine's loader (templates/blaslt.cu.j2) in a host program: it opens the nvidia-cublas wheel's
    library through QJC_CUBLASLT_LIB, checks its major version against the header and finds every function it
    calls; without the variable and with no copy on the loader's path it reports the library missing."""
    from qjc.backends.cuda.cublaslt_paths import find_include, find_library
    from qjc.backends.cuda.kernels.base import render

    include, library = find_include(NVCC), find_library()
    if include is None or library is None:
        pytest.skip("the nvidia-cublas wheel (cuBLASLt's header and library) is not installed")
    (tmp_path / "qjc_common.cuh").write_text(render("common.cuh.j2"))
    (tmp_path / "blaslt.cu").write_text(render("blaslt.cu.j2"))
    (tmp_path / "probe.cu").write_text('#include "blaslt.cu"\n#include <cstdio>\n'
                                       'int main() { printf("%d", qjc_lt::api().ok ? 1 : 0); return 0; }\n')
    exe = tmp_path / "probe"
    subprocess.run([NVCC, "-std=c++17", "-I", str(tmp_path), "-I", str(include), str(tmp_path / "probe.cu"), "-o",
                    str(exe), "-ldl"], check=True, capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("QJC_CUBLASLT_LIB", "LD_LIBRARY_PATH")}
    opened = subprocess.run([str(exe)], env={**env, "QJC_CUBLASLT_LIB": str(library)}, capture_output=True,
                            text=True, timeout=60)
    assert opened.stdout == "1", opened
    missing = subprocess.run([str(exe)], env={**env, "QJC_CUBLASLT_LIB": str(tmp_path / "none.so")},
                             capture_output=True, text=True, timeout=60)
    ldconfig = shutil.which("ldconfig") or ("/sbin/ldconfig" if Path("/sbin/ldconfig").is_file() else None)
    if ldconfig and "libcublasLt.so" not in subprocess.run([ldconfig, "-p"], capture_output=True, text=True).stdout:
        assert missing.stdout == "0", missing  # no system copy the soname could find


def test_a_missing_cublaslt_is_said_once(monkeypatch):
    """Loading an engine built with cuBLASLt where neither the wheel nor the dynamic loader has the library: one
    message says qjc's own GEMMs will run and how to get the library; where the wheel has it, the engine is
    pointed at it and nothing is said."""
    from qjc.backends.cuda import cublaslt_paths

    said: list[str] = []
    # set, then removed: monkeypatch then restores the session's own value (or absence) after the test, so the
    # path this test makes the loader export does not leak into later engines
    monkeypatch.setenv("QJC_CUBLASLT_LIB", "")
    monkeypatch.delenv("QJC_CUBLASLT_LIB")
    monkeypatch.setattr(cublaslt_paths, "_warned", set())
    monkeypatch.setattr(cublaslt_paths, "find_library", lambda: None)
    monkeypatch.setattr(cublaslt_paths, "SONAME", "libqjc_no_such_cublaslt.so.13")
    assert cublaslt_paths.point_engine_at_library(said.append) is None
    assert cublaslt_paths.point_engine_at_library(said.append) is None
    assert len(said) == 1 and "qjc's own, slower GEMMs" in said[0] and "pip install nvidia-cublas" in said[0]
    wheel = Path("/opt/nvidia/cu13/lib/libcublasLt.so.13")
    monkeypatch.setattr(cublaslt_paths, "find_library", lambda: wheel)
    assert cublaslt_paths.point_engine_at_library(said.append) == wheel
    assert os.environ["QJC_CUBLASLT_LIB"] == str(wheel) and len(said) == 1


def _cache_graph(extra_reader: bool, attention_layout: str):
    """K / V cache writes (layout bhsd) read by a paged attention; optionally the new K pool also feeds another op."""
    from qjc.ir import Graph
    from qjc.ir.dtypes import parse_dtype
    from qjc.ir.types import TensorType

    g = Graph("cache")
    f32, pool = parse_dtype("f32"), (16, 2, 8, 32)
    k_pool, v_pool = (g.add_input(n, TensorType(pool, f32)) for n in ("k_pool", "v_pool"))
    table = g.add_input("block_table", TensorType((2, 8), parse_dtype("i32")))
    positions = g.add_input("positions", TensorType((2, 1), parse_dtype("i64")))
    q = g.add_input("q", TensorType((2, 8, 1, 32), f32))  # 8 heads: a multiple of the kv heads either way
    k, v = (g.add_input(n, TensorType((2, 2, 1, 32), f32)) for n in ("k", "v"))
    k2 = g.op("paged_kv_write", k_pool, table, positions, k, layout="bhsd")
    v2 = g.op("paged_kv_write", v_pool, table, positions, v, layout="bhsd")
    out = g.op("paged_attention", q, k2, v2, table, positions, layout=attention_layout)
    g.set_outputs(out, *([g.op("mul", k2, k2)] if extra_reader else [k2, v2]))
    return g


@needs_nvcc
@pytest.mark.parametrize("extra_reader,attention_layout,fused", [(False, "bhsd", True), (True, "bhsd", False),
                                                                 (False, "bshd", False)])
def test_cache_writes_move_into_the_attention_only_when_it_alone_reads_them(tmp_path, extra_reader,
                                                                            attention_layout, fused):
    import qjc

    out = tmp_path / "cache.qjc"
    qjc.api.build(_cache_graph(extra_reader, attention_layout), out, target="cuda", archs=("sm_90a",))
    steps = [s["kernel"] for s in json.loads((out / "cuda" / "plan.json").read_text())["steps"]]
    assert any("paged_kv_write" in s for s in steps) != fused, steps
    kernels = "".join(p.read_text() for p in (out / "cuda" / "src").glob("kernels_*.cu"))
    assert ("attend<true>" in kernels) == fused
