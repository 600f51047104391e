"""Settings of secure aggregation: the fixed-point ring, clipping, the neighbour graph and the threshold."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedlit.compression.config import CompressionConfig

log = logging.getLogger(__name__)


@dataclass
class SecureAggregationConfig:
    """Masked aggregation after Bonawitz et al. (SecAgg, 2017) and Bell et al. (SecAgg+, 2020).

    Each client sends ``n_k * clip(update_k)`` and ``n_k`` in fixed point, masked; the server learns only
    their sums, hence the example-weighted mean update.

    Args:
        bits: the ring is Z_2^bits (1..64); masked vectors travel as 4-byte words up to 32 bits, else 8.
        scale: fixed-point scale: a value x is sent as round(x * scale).
        clip: every coordinate of a client's update (its adapter minus the global one) is clipped to
            [-clip, clip] before weighting; it bounds the values so that the ring sum cannot wrap.
        neighbours: SecAgg+ neighbour count k per client (an even number, rounded up); ``None`` masks
            every pair of clients (SecAgg). Costs grow with k per client, so k ~ O(log n) gives n log n
            in total.
        threshold: share threshold t as a fraction of a client's neighbours: t = max(1, ceil(threshold * k)).
            Up to t - 1 colluding neighbours (with the server) learn nothing of a client's update; up to
            k - t of its neighbours may drop out and the round still completes.
        allow_fewer_than_three: run rounds with fewer than 3 clients. Off by default: with 2, each client can
            compute the other's update from the mean, so masking protects nothing between them.
    """

    bits: int = 64
    scale: float = 2.0**24
    clip: float = 16.0
    neighbours: int | None = None
    threshold: float = 0.5
    allow_fewer_than_three: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 64:
            raise ValueError(f"secure_aggregation.bits must be in 1..64, got {self.bits}")
        if self.scale <= 0 or self.clip <= 0:
            raise ValueError(f"secure_aggregation.scale and clip must be > 0, got {self.scale} and {self.clip}")
        if self.neighbours is not None and self.neighbours < 1:
            raise ValueError(f"secure_aggregation.neighbours must be >= 1 or null, got {self.neighbours}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"secure_aggregation.threshold must be in (0, 1], got {self.threshold}")

    def check_round_size(self, num_clients: int) -> None:
        """Refuse rounds of fewer than 3 clients unless allowed."""
        if num_clients < 3 and not self.allow_fewer_than_three:
            raise ValueError(f"secure aggregation over {num_clients} client(s) per round hides nothing: each client "
                             "can compute the other's update from the mean; sample at least 3 "
                             "(strategy.clients_per_round) or set secure_aggregation.allow_fewer_than_three: true")

    def warn_if_capped(self, num_clients: int) -> None:
        """Say once, when a run is set up, that rounds of ``num_clients`` cannot have ``neighbours``."""
        if self.neighbours is not None and self.degree(num_clients) < self.neighbours:
            log.warning("secure_aggregation.neighbours %d: a round of %d clients has only %d others per client, "
                        "so every pair is masked (SecAgg)", self.neighbours, num_clients, num_clients - 1)

    def check_ring(self, num_clients: int, max_weight: int) -> None:
        """Refuse a ring too narrow for ``num_clients`` vectors of ``max_weight * clip * scale`` (each client's
        largest fixed-point value): their sum would wrap around, and every client would fail to mask."""
        largest = max_weight * max(self.clip * self.scale, 1.0)  # the weight itself travels unscaled
        if largest > (1 << (self.bits - 1)) // num_clients - 1:
            needed = math.ceil(math.log2(num_clients * (largest + 1))) + 1
            raise ValueError(f"secure_aggregation.bits {self.bits} is too narrow: {num_clients} clients x up to "
                             f"{max_weight} examples x clip {self.clip:g} x scale {self.scale:g} need at least "
                             f"{needed} bits (raise bits, or lower scale or clip)")

    def compressed_ring(self, compression: CompressionConfig, num_clients: int, max_weight: int
                        ) -> SecureAggregationConfig:
        """The ring of a round of compressed updates: each coordinate a ``compression.bits``-bit integer code on
        the grid of step ``clip / g`` (``g = 2^(bits-1) - 1``), so the scale is ``g / clip``, and the ring just
        wide enough for ``num_clients`` codes weighted by up to ``max_weight`` examples:
        ``ceil(log2(num_clients * (max_weight * g + 1))) + 1`` bits (one for the sign)."""
        g = compression.grid_levels
        bits = math.ceil(math.log2(num_clients * (max_weight * g + 1))) + 1
        return dataclasses.replace(self, bits=bits, scale=g / self.clip)

    def degree(self, num_clients: int) -> int:
        """Neighbours per client among ``num_clients``: k rounded up to even, at most everyone else."""
        if self.neighbours is None:
            return num_clients - 1
        return min(num_clients - 1, 2 * math.ceil(self.neighbours / 2))

    def shares_needed(self, num_clients: int) -> int:
        """The Shamir threshold t for a round with ``num_clients`` participants."""
        return max(1, math.ceil(self.threshold * self.degree(num_clients)))

    def error_bound(self, num_clients: int, total_examples: int) -> float:
        """Largest per-coordinate error of the unmasked weighted-mean update versus exact float arithmetic
        (for updates within ``clip``): each of ``num_clients`` roundings is off by at most 1/(2 scale)
        before the division by the total example count."""
        return num_clients / (2 * self.scale * total_examples)
