"""Shamir t-of-n secret sharing of 32-byte secrets over the prime field GF(2^521 - 1)."""

from __future__ import annotations

import secrets

PRIME = 2**521 - 1  # a Mersenne prime above every 32-byte secret
SHARE_BYTES = 66


def split(secret: bytes, threshold: int, xs: list[int]) -> dict[int, bytes]:
    """Shares of ``secret`` at the points ``xs`` (distinct, non-zero); any ``threshold`` of them recover it."""
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be in 1..{len(xs)} (the number of shares)")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError(f"share points must be distinct and non-zero, got {xs}")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y.to_bytes(SHARE_BYTES, "big")
    return shares


def combine(shares: dict[int, bytes], threshold: int, secret_bytes: int = 32) -> bytes:
    """The secret, by Lagrange interpolation at 0 of the first ``threshold`` shares.

    Shamir cannot tell a wrong share from a right one: callers check the result against a commitment.
    """
    if len(shares) < threshold:
        raise ValueError(f"{len(shares)} shares, {threshold} needed")
    points = sorted(shares.items())[:threshold]
    secret = 0
    for i, (xi, yi) in enumerate(points):
        numerator = denominator = 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                numerator = numerator * -xj % PRIME
                denominator = denominator * (xi - xj) % PRIME
        secret = (secret + int.from_bytes(yi, "big") * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * secret_bytes):
        raise ValueError("the shares do not reconstruct a secret of the expected size")
    return secret.to_bytes(secret_bytes, "big")
