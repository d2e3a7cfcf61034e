"""`qjc dump` and `qjc explain` on real model kinds: module specs, ONNX-free torch paths, bad files."""

from __future__ import annotations

import textwrap

import pytest

from qjc.cli import main

MODULE = textwrap.dedent('''
    import torch

    class Net(torch.nn.Module):
        def forward(self, x):
            return torch.special.bessel_j0(x) + torch.relu(x) * 2

    def good():
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU()).eval(), (torch.randn(2, 4),)

    def partly_unsupported():
        return Net(), (torch.randn(3),)

    def wrong_shape():
        return 42
''')


@pytest.fixture
def spec_dir(tmp_path, monkeypatch):
    (tmp_path / "qjc_cli_models_fixture.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_dump_module_spec_prints_ir(spec_dir, capsys):
    assert main(["dump", "qjc_cli_models_fixture:good"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("graph main(%input: f32[2,4])")
    assert "linear(" in text and "relu(" in text


def test_explain_lists_every_op_and_target_acceptance(spec_dir, capsys):
    assert main(["explain", "qjc_cli_models_fixture:good", "--target", "npu_stub"]) == 0
    out = capsys.readouterr().out
    assert "aten.linear.default" in out and "target npu_stub" in out
    assert main(["explain", "qjc_cli_models_fixture:good"]) == 0
    out = capsys.readouterr().out
    assert "no target (every fusion allowed)" in out and "fused:gemm" in out and "kernels: kernels=1" in out
    assert "memory plan: arena" in out
    assert main(["explain", "qjc_cli_models_fixture:partly_unsupported"]) == 0
    out = capsys.readouterr().out
    assert "aten.special_bessel_j0.default  1      NO" in out
    assert "aten.relu.default" in out


def test_bad_specs_and_files_exit_1(spec_dir, tmp_path, capsys):
    assert main(["dump", "qjc_cli_models_fixture:wrong_shape"]) == 1
    assert "must return (module, example_inputs)" in capsys.readouterr().err
    assert main(["dump", "qjc_cli_models_fixture:partly_unsupported"]) == 1
    assert "unsupported op" in capsys.readouterr().err
    bad = tmp_path / "junk.gguf"
    bad.write_bytes(b"\x00" * 64)
    assert main(["dump", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "junk.gguf" in err and "not a GGUF file" in err and "Traceback" not in err
