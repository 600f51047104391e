"""Blockwise absmax quantization with unbiased stochastic rounding, and its wire form.

A vector is cut into blocks of ``block_size`` values; a block's scale ``s`` is its largest magnitude, and each
value ``x`` becomes the code ``q`` of the nearest (or a stochastically chosen neighbouring) of 2^bits levels
spread evenly over [-s, s]: ``t = (x / s + 1) * L / 2`` with ``L = 2^bits - 1``, ``q = floor(t + U)``, ``U``
uniform on [0, 1) (so ``E[q] = t``), decoded as ``(2 q / L - 1) * s``. Decoding errs by at most ``s / L``
with nearest rounding and less than ``2 s / L`` with stochastic rounding, per value of the block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from fedlit.compression.bits import pack_bits, unpack_bits
from fedlit.compression.config import CompressionConfig


@dataclass(frozen=True)
class Quantized:
    """Codes in [0, 2^bits - 1] and one float32 scale per block."""

    codes: np.ndarray
    scales: np.ndarray


def _round(scaled: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """Stochastic rounding with ``rng`` (unbiased), nearest without."""
    if rng is None:
        return np.rint(scaled)
    return np.floor(scaled + rng.random(scaled.shape))


def _blocks(values: np.ndarray, block_size: int) -> np.ndarray:
    """``values`` as rows of ``block_size``, the last padded with zeros."""
    padded = np.zeros(-(-len(values) // block_size) * block_size)
    padded[: len(values)] = values
    return padded.reshape(-1, block_size)


def block_scales(values: np.ndarray, block_size: int) -> np.ndarray:
    """Each block's largest magnitude as float32, rounded up so that no value exceeds its block's scale."""
    absmax = np.abs(_blocks(values, block_size)).max(axis=1)
    scales = absmax.astype(np.float32)
    low = scales.astype(np.float64) < absmax
    scales[low] = np.nextafter(scales[low], np.float32(np.inf))
    return scales


def quantize(values: np.ndarray, config: CompressionConfig, rng: np.random.Generator | None) -> Quantized:
    """``values`` in ``config.bits``-bit codes; ``rng`` draws the stochastic rounding (``None``: nearest)."""
    values = np.asarray(values, dtype=np.float64)
    scales = block_scales(values, config.block_size)
    safe = np.where(scales > 0, scales, 1).astype(np.float64)[:, None]
    scaled = (_blocks(values, config.block_size) / safe + 1) * (config.levels / 2)
    codes = np.clip(_round(scaled, rng), 0, config.levels).reshape(-1)[: len(values)]
    return Quantized(codes.astype(np.uint8), scales)


def dequantize(quantized: Quantized, config: CompressionConfig) -> np.ndarray:
    """The float64 values the codes stand for (a zero scale decodes its whole block to zeros)."""
    count = len(quantized.codes)
    levels = _blocks(quantized.codes.astype(np.float64), config.block_size) * (2 / config.levels) - 1
    return (levels * quantized.scales.astype(np.float64)[:, None]).reshape(-1)[:count]


def error_bound(values: np.ndarray, config: CompressionConfig) -> np.ndarray:
    """The largest error each value's decoding may have: its block's scale over the levels, twice that when
    the rounding is stochastic."""
    per_block = block_scales(np.asarray(values, dtype=np.float64), config.block_size) / config.levels
    bound = np.repeat(per_block.astype(np.float64), config.block_size)[: len(values)]
    return bound * (2 if config.stochastic else 1)


def to_wire(quantized: Quantized, config: CompressionConfig) -> bytes:
    """safetensors bytes: the codes packed at ``bits`` bits each, and the float32 scales."""
    packed = np.frombuffer(pack_bits(quantized.codes, config.bits), dtype=np.uint8)
    return save_arrays({"codes": packed, "scales": quantized.scales})


def from_wire(data: bytes, config: CompressionConfig, count: int) -> Quantized:
    """Inverse of :func:`to_wire` for ``count`` values; bytes of another shape raise ValueError."""
    try:
        arrays = load_arrays(data)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for garbage
        raise ValueError(f"not a compressed update: {error}") from None
    if set(arrays) != {"codes", "scales"}:
        raise ValueError(f"not a compressed update: tensors {sorted(arrays)}, expected codes and scales")
    blocks = -(-count // config.block_size)
    if arrays["scales"].shape != (blocks,) or arrays["scales"].dtype != np.float32:
        raise ValueError(f"compressed update: {arrays['scales'].shape} scales, expected {blocks} float32")
    if not np.isfinite(arrays["scales"]).all() or (arrays["scales"] < 0).any():
        raise ValueError("compressed update: its scales are negative or not finite")
    codes = unpack_bits(arrays["codes"].tobytes(), config.bits, count).astype(np.uint8)
    return Quantized(codes, arrays["scales"])


def quantize_to_grid(values: np.ndarray, config: CompressionConfig, clip: float,
                     rng: np.random.Generator | None) -> np.ndarray:
    """``values`` clipped to [-clip, clip] as integers in [-g, g], ``g = 2^(bits-1) - 1``, on the grid of step
    ``clip / g`` that every client shares (secure aggregation sums the integers in its ring)."""
    step = clip / config.grid_levels
    scaled = np.clip(np.asarray(values, dtype=np.float64), -clip, clip) / step
    return np.clip(_round(scaled, rng), -config.grid_levels, config.grid_levels).astype(np.int64)
