"""How a round's fits cross the backend and come back as one new global adapter: in the clear (here), or masked
(:class:`fedlit.secure.masked_workflow.SecureAggregationWorkflow`). The loop runs either the same way."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedlit.backends.base import Backend
from fedlit.backends.messages import ClientFailure, FitIns, FitRes, tensor_bytes
from fedlit.compression.config import CompressionConfig
from fedlit.compression.payloads import decode_update, encode_global
from fedlit.faults import FaultPolicy, update_problem
from fedlit.payload import Payload, Update, changes_from_bytes, flatten, to_bytes
from fedlit.server.run_records import METRIC_COLUMNS
from fedlit.strategies import Strategy

log = logging.getLogger(__name__)


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

    def train(self, backend: Backend, strategy: Strategy, server_round: int, requests: Mapping[str, FitIns],
              global_payload: Payload, faults: FaultPolicy, on_reply: Callable[[str], None] | None = None
              ) -> tuple[Payload, list[dict[str, Any]]]:
        """One round's fit phase: the new global adapter (the old one when the round is skipped) and the rows: each
        sampled client's ``train`` row (``excluded`` saying why its update was not used), plus a ``server``/``round``
        row when the round is skipped."""
        rows: list[dict[str, Any]] = []
        try:
            replies = self.fit(backend, server_round, requests, global_payload, on_reply)
            updates = []
            for client_id, reply in replies.items():
                ins = requests[client_id]
                update, row = self.receive(client_id, reply, strategy.fit_payload(global_payload, client_id), faults,
                                           len(ins.global_wire) + tensor_bytes(ins.mods))
                rows.append({"client": client_id, "split": "train", **row})
                if update is None:
                    log.warning("round %d: client '%s' excluded: %s", server_round, client_id, row["excluded"])
                    continue
                update.payload = strategy.received_update(update.payload, client_id, global_payload)
                updates.append(update)
            if len(updates) < faults.min_clients:
                raise RoundSkipped(f"{len(updates)} of {len(replies)} sampled clients sent a usable update "
                                   f"(min_clients {faults.min_clients})")
            return self.aggregate(strategy, global_payload, updates), rows
        except RoundSkipped as why:
            log.warning("round %d skipped, global adapter unchanged: %s", server_round, why)
            return global_payload, [*rows, {"client": "server", "split": "round", "excluded": f"round skipped: {why}"}]

    def receive(self, client_id: str, reply: FitRes | ClientFailure, global_payload: Payload, faults: FaultPolicy,
                bytes_received: int) -> tuple[Update | None, dict[str, Any]]:
        """One client's reply under the fault policy: its update (``None`` when excluded) and its train row's values
        (a metric the reply carries under a metrics.csv column, such as DP-SGD's ``epsilon``, counts even when the
        update is refused: it was spent). ``global_payload``: what the client was sent to start from."""
        values: dict[str, Any] = {"bytes_received": bytes_received, "bytes_sent": 0, "seconds": reply.seconds}
        update, problem = None, getattr(reply, "reason", None)
        if isinstance(reply, FitRes):
            values["bytes_sent"] = len(reply.wire) + tensor_bytes(reply.mods)
            values.update({name: value for name, value in reply.metrics.items() if name in METRIC_COLUMNS})
            try:
                update = self.accept(client_id, reply, global_payload, faults.max_update_norm)
            except Excluded as error:
                problem = str(error)
            except Exception as error:  # noqa: BLE001 - a malformed reply excludes that client, never the round
                problem = f"{type(error).__name__}: {error}"
        if problem is not None:
            return None, {**values, "excluded": problem}
        values["loss"] = update.metrics.get("train_loss_epoch", float("nan"))
        return update, {**values, **self.row(client_id, update, global_payload)}

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
        update = Update(client_id, payload, reply.num_examples, reply.metrics, reply.mods)
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
