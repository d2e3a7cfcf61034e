"""fp8 (e4m3) quantization: the scheme as an IR type, codes against torch's float8 conversion, the
error bound, and the fp8 mode (weights, plus per-token activations where the target has fp8 kernels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from graphs import mlp

from qjc.backends.base import Capabilities
from qjc.ir import f32
from qjc.ir.dtypes import QuantScheme, parse_dtype, quant_scheme_of
from qjc.ir.interpreter import run
from qjc.ir.quant import E4M3_MAX, QuantizedArray, dequantize, quantize
from qjc.ir.testing import assert_roundtrip
from qjc.ir.verifier import verify
from qjc.passes.manager import PassContext
from qjc.passes.quantize import quantize_weights, scheme_for
from qjc.passes.quantize.activations import QuantizeActivationsFp8
from qjc.passes.quantize.legalize import DequantizeUnsupportedWeights


@pytest.mark.parametrize("group,scale", [(0, "f32"), (32, "f16"), (128, "bf16")])
def test_scheme_names_parse_back_and_are_not_integer_schemes(group, scale):
    scheme = QuantScheme(8, group, True, parse_dtype(scale), codes="e4m3")
    assert scheme.name.startswith("f8e4m3") and not scheme.name.startswith("q8")
    dtype = parse_dtype(scheme.name)
    assert dtype.is_quant and quant_scheme_of(dtype) == scheme
    with pytest.raises(ValueError, match="symmetric"):
        QuantScheme(8, group, False, parse_dtype(scale), codes="e4m3")


@pytest.mark.parametrize("group", [0, 32])
def test_codes_match_torch_float8_and_error_is_bounded(group):
    rng = np.random.default_rng()
    x = rng.standard_normal((7, 64)) * rng.uniform(0.01, 10.0, (7, 1))
    scheme = QuantScheme(8, group, True, f32, codes="e4m3")
    q = quantize(x, scheme)
    assert isinstance(q, QuantizedArray) and q.data.dtype == np.uint8 and q.data.shape == x.shape
    scales = np.repeat(q.scales.astype(np.float64), group or 64, axis=-1)
    # independent reference: torch's float8_e4m3fn conversion of x / scale (round to nearest even)
    want = torch.from_numpy((x / scales).astype(np.float32)).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    np.testing.assert_array_equal(q.data, want)
    y = dequantize(q, np.float64)
    # 3 mantissa bits: half an ulp is 2^-4 of the value for normals; subnormals step by 2^-9 * scale
    assert (np.abs(y - x) <= np.abs(x) * 2.0**-4 + scales * 2.0**-10 + 1e-12).all()
    assert np.abs(x / scales).max() <= E4M3_MAX * (1 + 1e-6)  # nothing clips


def test_fp8_mode_quantizes_weights_and_activations_close_to_float():
    rng = np.random.default_rng()
    g = mlp(rng, 6)
    x = rng.standard_normal((6, 64)).astype(np.float32)
    (want,) = run(g, [x])
    quantize_weights(g, scheme_for("fp8"))
    ctx = PassContext()  # no target: as if it had fp8 kernels
    QuantizeActivationsFp8().run(g, ctx)
    verify(g)
    assert_roundtrip(g, inputs=[x])
    names = {n.inputs[1].type.dtype.name for n in g.nodes if n.op == "linear"}
    assert names == {"f8e4m3c_f32"}
    assert sum(n.op == "quantize" for n in g.nodes) == 2
    (got,) = run(g, [x])
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    # about 0.05 (3 mantissa bits on both operands); a rare draw with a small output reaches 0.09
    assert rel < 0.12, rel
    assert rel > 0  # the activations really went through fp8


def test_targets_without_fp8_keep_float_activations_and_dequantize_weights():
    rng = np.random.default_rng()
    g = mlp(rng, 6)
    quantize_weights(g, scheme_for("fp8"))
    x = rng.standard_normal((6, 64)).astype(np.float32)
    (weights_only,) = run(g, [x])
    caps = Capabilities(ops=frozenset({"linear", "relu"}), dtypes=frozenset({"f32"}))
    ctx = PassContext(capabilities=caps)
    QuantizeActivationsFp8().run(g, ctx)
    DequantizeUnsupportedWeights().run(g, ctx)
    verify(g)
    assert not any(n.op == "quantize" for n in g.nodes)
    assert any("activations stay in float" in line for line in ctx.log)
    np.testing.assert_allclose(run(g, [x])[0], weights_only, rtol=1e-5, atol=1e-6)
