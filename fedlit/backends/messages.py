"""What crosses between the server and a client for a fit, as plain dataclasses (no torch): they travel as
Python objects in-process, as Ray objects, or as msgpack bytes over Flower (:mod:`fedlit.wire`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedlit.compression.config import CompressionConfig
    from fedlit.privacy.example_dp import ExampleDPConfig


@dataclass
class FitIns:
    """What the server sends one client for one fit: the global adapter (safetensors bytes) and its plan.

    Args:
        global_wire: the global adapter.
        seed: seeds the client's fit (from seed, round and client id, so any backend computes the same); the server
            chose it, so nothing that protects the client is drawn from it (that comes from the client's own secret).
        clip_norm: client-level DP: clip the update to this L2 norm (``None``: no clipping).
        noise_std: client-level DP under masking: the client's share of the noise.
        example_dp: DP-SGD settings for the local training (``None``: plain training).
        example_dp_steps: DP-SGD steps the client has taken in earlier rounds (its epsilon so far counts them).
        masked: secure aggregation: send the update masked (the client's protocol state must be set up).
        server_round: the round this fit belongs to.
        run_id: the run's id (stable across resumes): a client keeps its state between rounds under it.
        compression: send the update quantized (and read the global adapter quantized when ``downlink``).
    """

    global_wire: bytes
    seed: int
    clip_norm: float | None = None
    noise_std: float = 0.0
    example_dp: ExampleDPConfig | None = None
    example_dp_steps: int = 0
    masked: bool = False
    server_round: int = 0
    run_id: str = ""
    compression: CompressionConfig | None = None


@dataclass
class FitRes:
    """One client's answer to :class:`FitIns`: its update as bytes (safetensors, or an encoded masked input),
    how many examples it trained on (0 when masked: the count travels inside the mask), its metrics and how
    long its fit took."""

    wire: bytes
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class ClientFailure:
    """A client that did not answer: it raised (``raised``: its own code did), ran past the deadline, or its worker
    died."""

    reason: str
    seconds: float = 0.0
    raised: bool = False
