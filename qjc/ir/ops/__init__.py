"""Op families. Importing this package registers every op."""

from qjc.ir.ops import attention, elementwise, fused, linalg, nn, paged, quant, reduction, shape  # noqa: F401
