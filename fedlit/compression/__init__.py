"""Quantized updates on the wire: blockwise absmax codes with unbiased stochastic rounding and error feedback."""

from fedlit.lazy import lazy_exports

_EXPORTS = {"CompressionConfig": "fedlit.compression.config", "ResidualStore": "fedlit.compression.residual"}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
