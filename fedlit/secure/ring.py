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


class MaskStream:
    """Adds or subtracts keystream masks of ``length`` ring elements into vectors, reusing one zero input and
    one output buffer: at these sizes fresh allocations, not the cipher, would set the pace.

    A mask is the AES-256-CTR keystream of a 32-byte seed read as words (AES-NI: several GB/s per core).
    """

    def __init__(self, length: int, bits: int) -> None:
        self.length, self.bits, self.dtype = length, bits, word_dtype(bits)
        nbytes = length * self.dtype.itemsize
        self._zeros = bytes(nbytes)
        self._out = bytearray(nbytes + 63)  # update_into wants room for one block more than the input
        self._words = np.frombuffer(self._out, dtype=self.dtype, count=length)

    def keystream(self, seed: bytes) -> np.ndarray:
        """The mask of ``seed`` as a view of the shared buffer (valid until the next call)."""
        Cipher(algorithms.AES(seed), modes.CTR(_COUNTER)).encryptor().update_into(self._zeros, self._out)
        return self._words

    def add(self, vector: np.ndarray, seed: bytes, sign: int = 1) -> None:
        """``vector += sign * mask(seed)`` modulo the word size (reduce to 2^bits once at the end)."""
        (np.add if sign > 0 else np.subtract)(vector, self.keystream(seed), out=vector)


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
