"""How a round's fits cross the backend and come back as one new global adapter: in the clear (here), or masked
(:class:`fedlit.secure.workflow.SecureAggregationWorkflow`). The loop runs either the same way."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedlit.backends.base import Backend
from fedlit.backends.messages import ClientFailure, FitIns, FitRes
from fedlit.compression.config import CompressionConfig
from fedlit.compression.payloads import decode_update, encode_global
from fedlit.faults import update_problem
from fedlit.payload import Payload, Update, changes_from_bytes, flatten, to_bytes
from fedlit.strategies import Strategy


class Excluded(ValueError):
    """A client's reply that must not reach the aggregate; the message says why."""


class RoundSkipped(RuntimeError):
    """The round cannot produce a new global adapter; the message says why."""


class Workflow(ABC):
    """One round's fit phase and aggregation; under ``compression`` updates (and, with ``downlink``, the global
    adapter) travel quantized."""

    masked: bool = False  # whether clients send masked updates (client-level DP then adds noise in shares)

    def __init__(self, compression: CompressionConfig | None = None) -> None:
        self.compression = compression

    def global_wire(self, global_payload: Payload) -> bytes:
        """The global adapter as clients receive it for their fits."""
        if self.compression is not None and self.compression.downlink:
            return encode_global(global_payload, self.compression)
        return to_bytes(global_payload)

    @abstractmethod
    def fit(self, backend: Backend, server_round: int, requests: Mapping[str, FitIns], global_payload: Payload,
            on_reply: Callable[[str], None] | None = None) -> dict[str, FitRes | ClientFailure]:
        """Send each sampled client its :class:`FitIns` and collect the replies (plus any protocol stages)."""

    @abstractmethod
    def accept(self, client_id: str, reply: FitRes, global_payload: Payload, max_update_norm: float | None) -> Update:
        """The client's update for the aggregate, or :class:`Excluded` with the reason."""

    @abstractmethod
    def row(self, client_id: str, update: Update, global_payload: Payload) -> dict[str, Any]:
        """What the client's train row may show about its accepted update (nothing that masking hides)."""

    @abstractmethod
    def aggregate(self, strategy: Strategy, global_payload: Payload, updates: list[Update]) -> Payload:
        """The new global adapter from the accepted updates, or :class:`RoundSkipped`."""


class PlainWorkflow(Workflow):
    """Updates travel as safetensors bytes (or quantized codes); the server checks each one and the strategy
    aggregates them."""

    def fit(self, backend: Backend, server_round: int, requests: Mapping[str, FitIns], global_payload: Payload,
            on_reply: Callable[[str], None] | None = None) -> dict[str, FitRes | ClientFailure]:
        return backend.call("fit", requests, on_reply)

    def accept(self, client_id: str, reply: FitRes, global_payload: Payload, max_update_norm: float | None) -> Update:
        payload = (changes_from_bytes(reply.wire, global_payload) if self.compression is None
                   else decode_update(reply.wire, global_payload, self.compression))
        update = Update(client_id, payload, reply.num_examples, reply.metrics)
        problem = update_problem(global_payload, update.payload, max_update_norm)
        if problem is not None:
            raise Excluded(problem)
        return update

    def row(self, client_id: str, update: Update, global_payload: Payload) -> dict[str, Any]:
        """The update's L2 distance from the global payload over its floating-point tensors (token ids, such as
        FedMKT's top-k ids, are labels, not coordinates)."""
        floats = [name for name, t in global_payload.items() if t.is_floating_point()]
        distance = flatten({n: update.payload[n] for n in floats}) - flatten({n: global_payload[n] for n in floats})
        return {"num_examples": update.num_examples, "update_norm": float(np.linalg.norm(distance))}

    def aggregate(self, strategy: Strategy, global_payload: Payload, updates: list[Update]) -> Payload:
        return strategy.aggregate(global_payload, updates)
