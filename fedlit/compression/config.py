"""What compression of the traffic a run asks for (plain data: it travels to clients inside their fit plan)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CompressionConfig:
    """Quantized updates on the wire: blockwise absmax scaling, ``bits`` per value.

    Args:
        bits: bits per value (2..8). A block of ``block_size`` values is sent as ``bits``-bit codes plus one
            float32 scale (its largest magnitude): 2^bits levels spread evenly over [-scale, scale].
        block_size: values per block (one scale each); smaller blocks follow the update's local magnitude
            more closely and cost 32 / block_size bits per value more.
        stochastic: unbiased stochastic rounding to the two nearest levels (the expected decoded value is the
            value itself); ``false`` rounds to the nearest level (half the worst-case error, but biased).
        error_feedback: carry each client's rounding error (what it meant to send minus what it sent) into
            its next update (Seide et al. 2014; Karimireddy et al. 2019), so that no part of an update is lost
            for good; the residual stays with the client, in its state directory.
        downlink: also quantize the global adapter the server sends (nearest rounding, same bits and blocks).
    """

    bits: int = 8
    block_size: int = 64
    stochastic: bool = True
    error_feedback: bool = True
    downlink: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise ValueError(f"compression.bits must be in 2..8, got {self.bits}")
        if self.block_size < 1:
            raise ValueError(f"compression.block_size must be >= 1, got {self.block_size}")

    @property
    def levels(self) -> int:
        """Intervals between the 2^bits levels of a block: a value lands within scale / levels of its level
        (nearest rounding), within 2 scale / levels (stochastic)."""
        return (1 << self.bits) - 1

    @property
    def grid_levels(self) -> int:
        """Under secure aggregation: codes are symmetric integers in [-grid_levels, grid_levels] on one grid
        shared by every client (so that the ring sums them), 2^(bits-1) - 1 levels a side."""
        return (1 << (self.bits - 1)) - 1
