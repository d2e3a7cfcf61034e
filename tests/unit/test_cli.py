"""The `qjc` command, run in-process through qjc.cli.main (plus one run of the installed script)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import qjc
from qjc import safetensors_io
from qjc.cli import main

IR_TEXT = textwrap.dedent("""\
    graph tiny(%x: f32[batch,4], %y: f32[batch,4]) {
      sym batch: 1..8
      const %w: f32[4]
      %0: f32[batch,4] = mul(%x, %w)
      %1: f32[batch,4] = add(%0, %y)
      %out: f32[batch,4] = relu(%1)
      return %out
    }
""")


@pytest.fixture
def model(tmp_path) -> tuple[Path, np.ndarray]:
    path = tmp_path / "tiny.qir"
    path.write_text(IR_TEXT)
    w = np.random.default_rng(3).standard_normal(4).astype(np.float32)
    safetensors_io.save_file({"w": w}, tmp_path / "tiny.safetensors")
    return path, w


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"qjc {qjc.__version__}"


def test_no_command_and_unknown_command_are_usage_errors(capsys):
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["compile"]) == 2  # missing MODEL


def test_targets(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("npu_stub"))
    assert "yes" in line and "builtin" in line and "simulated" in line


def test_ops(capsys):
    assert main(["ops"]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln for ln in out.splitlines()[1:]}
    assert "elementwise" in rows["add"] and "approximate: str='none'" in rows["gelu"]
    assert main(["ops", "--family", "matmul"]) == 0
    assert {ln.split()[0] for ln in capsys.readouterr().out.splitlines()[1:]} == {"matmul", "linear"}
    assert main(["ops", "--family", "nonsense"]) == 1
    assert "error: no ops in family" in capsys.readouterr().err


def test_knobs(capsys):
    assert main(["knobs"]) == 0
    out = capsys.readouterr().out
    assert "QJC_DEBUG" in out and "QJC_NO_PLUGINS" in out


def test_dump_prints_the_ir(model, capsys):
    path, _ = model
    assert main(["dump", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("graph tiny(") and "%out: f32[batch,4] = relu(%1)" in out


def test_dump_malformed_text_names_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.qir"
    bad.write_text(IR_TEXT.replace("= add(%0, %y)", "= add(%0, %nowhere)"))
    assert main(["dump", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{bad}:5:" in err and "Traceback" not in err


def test_dump_bad_model_files_exit_1(tmp_path, capsys):
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"")
    assert main(["dump", str(onnx_file)]) == 1
    assert "not an ONNX model" in capsys.readouterr().err
    assert main(["dump", str(tmp_path / "missing.qir")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_compile_and_run_round_trip(model, tmp_path, capsys):
    path, w = model
    art = tmp_path / "tiny.qjc"
    assert main(["compile", str(path), "--target", "npu_stub", "-o", str(art), "-O", "cores=2"]) == 0
    out = capsys.readouterr().out
    timing_lines = [ln.split() for ln in out.splitlines() if ln.strip().endswith(" ms")]
    assert [t[0] for t in timing_lines] == ["load", "verify", "passes", "lower", "total"]
    assert f"wrote {art}" in out
    assert qjc.load(art).manifest["target_options"]["cores"] == 2

    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    y = rng.standard_normal((3, 4)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x, y=y)
    out_file = tmp_path / "out.npz"
    assert main(["run", str(art), "--inputs", str(tmp_path / "in.npz"), "--out", str(out_file)]) == 0
    assert "out: float32[3,4]" in capsys.readouterr().out
    with np.load(out_file) as result:
        got = result["out"]
    want = np.maximum(x.astype(np.float64) * w + y, 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_compile_is_deterministic_through_the_cli(model, tmp_path):
    path, _ = model
    for name in ("a", "b"):
        assert main(["compile", str(path), "-o", str(tmp_path / name)]) == 0
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_compile_is_deterministic_across_processes(model, tmp_path):
    """Another interpreter with another hash seed (set and dict-of-set orders differ) writes the
    same bytes as this one."""
    path, _ = model
    assert main(["compile", str(path), "-o", str(tmp_path / "here")]) == 0
    env = dict(os.environ, PYTHONHASHSEED="12345")
    command = [sys.executable, "-m", "qjc.cli", "compile", str(path), "-o", str(tmp_path / "there")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    here = {p.name: p.read_bytes() for p in (tmp_path / "here").iterdir()}
    there = {p.name: p.read_bytes() for p in (tmp_path / "there").iterdir()}
    assert here == there


def test_compile_user_errors_exit_1(model, tmp_path, capsys):
    path, _ = model
    assert main(["compile", str(path), "--target", "tpu9000", "-o", str(tmp_path / "o")]) == 1
    assert "unknown target 'tpu9000'" in capsys.readouterr().err
    assert main(["compile", str(path), "-O", "cores=many", "-o", str(tmp_path / "o")]) == 1
    assert "expected an integer" in capsys.readouterr().err
    (tmp_path / "tiny.safetensors").unlink()  # the constant %w now has no data
    assert main(["compile", str(path), "-o", str(tmp_path / "o")]) == 1
    assert "%w" in capsys.readouterr().err


def test_run_input_errors_exit_1(model, tmp_path, capsys):
    path, _ = model
    art = tmp_path / "art"
    assert main(["compile", str(path), "-o", str(art)]) == 0
    np.savez(tmp_path / "wrong.npz", x=np.zeros((3, 4), np.float32), y=np.zeros((3, 4)))
    assert main(["run", str(art), "--inputs", str(tmp_path / "wrong.npz")]) == 1
    assert "input 'y': expected dtype f32" in capsys.readouterr().err
    np.savez(tmp_path / "partial.npz", x=np.zeros((3, 4), np.float32))
    assert main(["run", str(art), "--inputs", str(tmp_path / "partial.npz")]) == 1
    assert "missing input(s) ['y']" in capsys.readouterr().err


def test_internal_errors_exit_3(monkeypatch, capsys):
    import qjc.cli as cli

    def crash(args):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(cli, "cmd_knobs", crash)
    assert main(["knobs"]) == 3
    err = capsys.readouterr().err
    assert "bug in qjc" in err and "Traceback" not in err
    monkeypatch.setenv("QJC_DEBUG", "1")
    assert main(["knobs"]) == 3
    assert "Traceback" in capsys.readouterr().err


def test_installed_console_script(model, tmp_path):
    """The `qjc` entry point installed in the environment works end to end for one command."""
    script = shutil.which("qjc", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the qjc console script is not installed beside this Python")
    path, _ = model
    done = subprocess.run([script, "dump", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "graph tiny(" in done.stdout
    missing = str(tmp_path / "nope.qir")
    bad = subprocess.run([script, "dump", missing], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ")


def test_compile_dump_ir_writes_every_pass(model, tmp_path, capsys):
    path, _ = model
    dump = tmp_path / "ir"
    out = tmp_path / "a.qjc"
    assert main(["compile", str(path), "--target", "npu_stub", "-o", str(out), "--dump-ir", str(dump)]) == 0
    names = sorted(p.name for p in dump.iterdir())
    assert names[0] == "00_input.txt" and any(n.endswith("_fusion.txt") or "fus" in n for n in names)
    assert names[-1].endswith("memory_plan.txt")
    from qjc.ir.parser import parse_graph

    for name in names:  # every dump is valid IR text
        parse_graph((dump / name).read_text(), source=name)
