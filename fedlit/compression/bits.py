"""Unsigned integers packed at any width from 1 to 64 bits, little-endian (a 4-bit code takes half a byte)."""

from __future__ import annotations

import numpy as np


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """The low ``bits`` bits of each value, back to back; ``ceil(len(values) * bits / 8)`` bytes."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in 1..64, got {bits}")
    words = np.ascontiguousarray(values, dtype="<u8")
    if bits == 64:
        return words.tobytes()
    if bits % 8 == 0:
        return words.view(np.uint8).reshape(-1, 8)[:, : bits // 8].tobytes()
    planes = np.unpackbits(words.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")[:, :bits]
    return np.packbits(planes, bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` values as uint64; a length that does not match raises ValueError."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in 1..64, got {bits}")
    if len(data) != (count * bits + 7) // 8:
        raise ValueError(f"{len(data)} bytes do not hold {count} values of {bits} bits")
    raw = np.frombuffer(data, dtype=np.uint8)
    if bits % 8 == 0:
        wide = np.zeros((count, 8), dtype=np.uint8)
        wide[:, : bits // 8] = raw.reshape(count, bits // 8)
        return wide.reshape(-1).view("<u8").astype(np.uint64)
    planes = np.zeros((count, 64), dtype=np.uint8)
    planes[:, :bits] = np.unpackbits(raw, bitorder="little", count=count * bits).reshape(count, bits)
    return np.packbits(planes, axis=1, bitorder="little").reshape(-1).view("<u8").astype(np.uint64)
