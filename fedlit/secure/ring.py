"""Fixed-point encoding of float vectors into the ring Z_2^bits, and cryptographic masks in that ring.

Arithmetic runs in numpy's unsigned words (uint32 up to 32 bits, else uint64), whose overflow wraps
modulo 2^32 or 2^64; as 2^bits divides both, reducing at the end gives the result modulo 2^bits.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_COUNTER = bytes(16)  # every mask key is used once (HKDF binds it to round and pair): a fixed start is safe


def word_dtype(bits: int) -> np.dtype:
    return np.dtype(np.uint32 if bits <= 32 else np.uint64)


def reduce(vector: np.ndarray, bits: int) -> np.ndarray:
    """``vector`` modulo 2^bits, in place where the word is wider than the ring."""
    if bits not in (32, 64):
        vector &= vector.dtype.type((1 << bits) - 1)
    return vector


def mask(seed: bytes, length: int, bits: int) -> np.ndarray:
    """``length`` uniform ring elements from a 32-byte seed: the AES-256-CTR keystream read as words
    (AES-NI runs it at several GB/s per core)."""
    dtype = word_dtype(bits)
    nbytes = length * dtype.itemsize
    out = bytearray(nbytes + 63)  # update_into wants room for one block more than the input
    Cipher(algorithms.AES(seed), modes.CTR(_COUNTER)).encryptor().update_into(bytes(nbytes), out)
    return reduce(np.frombuffer(out, dtype=dtype, count=length), bits)  # writable: it views the bytearray


def encode(values: np.ndarray, scale: float, bits: int, limit: int) -> np.ndarray:
    """round(values * scale) as two's-complement ring elements; any |value| above ``limit`` raises, so that
    the sum of the participants' vectors cannot wrap around the ring."""
    scaled = np.rint(np.asarray(values, dtype=np.float64) * scale)
    largest = float(np.abs(scaled).max(initial=0.0))
    if largest > limit:
        raise OverflowError(
            f"a fixed-point value of {largest:.3g} exceeds {limit} (2^{bits - 1} / participants): "
            "lower secure_aggregation.scale or clip, or raise bits"
        )
    return reduce(scaled.astype(np.int64).view(np.uint64).astype(word_dtype(bits)), bits)


def decode(vector: np.ndarray, scale: float, bits: int) -> np.ndarray:
    """Inverse of :func:`encode` for a ring sum whose true value lies in [-2^(bits-1), 2^(bits-1))."""
    unsigned = vector.astype(np.uint64) & np.uint64((1 << bits) - 1) if bits < 64 else vector.astype(np.uint64)
    signed = unsigned.view(np.int64).copy()
    if bits < 64:
        signed[signed >= 1 << (bits - 1)] -= 1 << bits
    return signed.astype(np.float64) / scale
