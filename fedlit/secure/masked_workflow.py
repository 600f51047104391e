"""The server's side of secure aggregation as a round workflow: key exchange, masked fits, unmasking, all through
the backend, so that each client's protocol state lives where the client runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from fedlit.backends.base import Backend
from fedlit.backends.messages import ClientFailure, FitIns, FitRes
from fedlit.compression.config import CompressionConfig
from fedlit.payload import Payload, Update
from fedlit.secure.config import SecureAggregationConfig
from fedlit.secure.protocol import RoundAbandoned
from fedlit.secure.simulation import SecureRound
from fedlit.server.round_workflow import Excluded, RoundSkipped, Workflow
from fedlit.strategies import Strategy


class SecureAggregationWorkflow(Workflow):
    """SecAgg/SecAgg+ around the fit: the server learns only the sum of the survivors' weighted updates and of
    their weights; the strategy steps from that mean. Key-exchange failures are dropouts the protocol recovers
    from; below the threshold the round is skipped. Under ``compression`` clients quantize onto a grid they all
    share and the round's ring is just wide enough for the sum of the codes
    (:meth:`~fedlit.secure.config.SecureAggregationConfig.compressed_ring`, ``max_weight``: the largest example
    count a client weights by)."""

    masked = True

    def __init__(self, config: SecureAggregationConfig, seed: int = 0, compression: CompressionConfig | None = None,
                 max_weight: int = 1) -> None:
        super().__init__(compression)
        self.config, self.seed, self.max_weight = config, seed, max_weight
        self.round: SecureRound | None = None
        self.global_bytes: dict[str, int] = {}

    def fit(self, backend: Backend, server_round: int, requests: Mapping[str, FitIns], global_payload: Payload,
            on_reply: Callable[[str], None] | None = None) -> dict[str, FitRes | ClientFailure]:
        try:  # Poisson sampling can draw fewer than 3
            self.config.check_round_size(len(requests))
        except ValueError as error:
            raise RoundSkipped(str(error)) from None
        config = (self.config if self.compression is None
                  else self.config.compressed_ring(self.compression, len(requests), self.max_weight))
        self.round = SecureRound(config, server_round, list(requests), sum(t.numel() for t in
                                 global_payload.values()), self.seed, transport=backend.call)
        ready = self.round.exchange_keys()
        self.global_bytes = {cid: len(ins.global_wire) for cid, ins in requests.items()}
        replies: dict[str, FitRes | ClientFailure] = {
            cid: ClientFailure(f"secure aggregation: {why}") for cid, why in self.round.failures.items()}
        masked = {cid: dataclasses.replace(requests[cid], mods={**requests[cid].mods, "masking": {}}) for cid in ready}
        replies.update(backend.call("fit", masked, on_reply))
        return replies

    def accept(self, client_id: str, reply: FitRes, global_payload: Payload, max_update_norm: float | None) -> Update:
        try:
            self.round.submit(client_id, reply.wire)  # the server checks the masked input's form
        except ValueError as error:
            raise Excluded(f"{type(error).__name__}: {error}") from None
        return Update(client_id, Payload(), 0, reply.metrics)

    def row(self, client_id: str, update: Update, global_payload: Payload) -> dict[str, Any]:
        """The whole protocol's traffic; example count and update norm stay masked."""
        return {"bytes_sent": self.round.bytes_sent[client_id],
                "bytes_received": self.global_bytes[client_id] + self.round.bytes_received[client_id]}

    def aggregate(self, strategy: Strategy, global_payload: Payload, updates: list[Update]) -> Payload:
        try:
            summed, total = self.round.finish()
        except RoundAbandoned as error:
            raise RoundSkipped(f"secure aggregation abandoned the round: {error}") from None
        return strategy.aggregate_masked(global_payload, summed, total)
