"""Adapters and updates as compressed bytes: what a client sends (its update, relative to the global adapter it
started from) and, optionally, the global adapter the server sends down."""

from __future__ import annotations

from fedlit.compression.config import CompressionConfig
from fedlit.compression.quantize import dequantize, from_wire, quantize, to_wire
from fedlit.payload import Payload, flatten, unflatten


def decode_update(wire: bytes, global_payload: Payload, config: CompressionConfig) -> Payload:
    """The adapter a client's compressed update stands for: the global one plus the decoded update."""
    start = flatten(global_payload)
    return unflatten(start + dequantize(from_wire(wire, config, len(start)), config), global_payload)


def encode_global(payload: Payload, config: CompressionConfig) -> bytes:
    """The global adapter in ``config.bits``-bit codes, rounded to the nearest level (the same bytes every time)."""
    return to_wire(quantize(flatten(payload), config, rng=None), config)


def decode_global(wire: bytes, like: Payload, config: CompressionConfig) -> Payload:
    """Inverse of :func:`encode_global`, shaped as the client's own trainable tensors ``like``."""
    count = sum(t.numel() for t in like.values())
    return unflatten(dequantize(from_wire(wire, config, count), config), like)
