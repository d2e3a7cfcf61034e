"""Weight-only quantization: schemes by name, round-to-nearest, and activation-aware scaling."""

from qjc.passes.quantize.modes import QUANT_MODES, scheme_for
from qjc.passes.quantize.weights import QuantizeWeights, quantize_weights

__all__ = ["QUANT_MODES", "scheme_for", "QuantizeWeights", "quantize_weights"]
