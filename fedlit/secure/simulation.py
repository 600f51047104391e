"""One secure-aggregation round, driven from the server's side; messages pass as bytes through a transport.

The transport carries a protocol stage's request bytes to each client's :class:`SecAggParty` and returns its
reply bytes (or a failure): in-process parties by default, or a backend's clients, wherever they run. Byte
counts are real. Dropouts can be injected per stage to exercise recovery.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping

import numpy as np

from fedlit.backends.messages import ClientFailure
from fedlit.secure.client_endpoint import SecAggParty
from fedlit.secure.config import SecureAggregationConfig
from fedlit.secure.messages import MaskedInput, decode, encode
from fedlit.secure.protocol import ProtocolError, SecAggServer

STAGES = ("advertise", "share", "masked_input", "unmask")
Transport = Callable[[str, Mapping[str, bytes]], Mapping[str, "bytes | ClientFailure"]]


class SecureRound:
    """Drive :class:`SecAggServer` and the participants' :class:`SecAggParty` endpoints through a round.

    Args:
        config: the protocol settings.
        server_round: binds keys and messages to this round.
        participants: client ids taking part.
        vector_length: length of each client's flattened update.
        seed: seeds the (public) neighbour graph.
        dropouts: stage name -> clients that vanish before sending that stage's message
            (``advertise``, ``share``, ``masked_input``, ``unmask``).
        transport: ``(party method, {client: request bytes}) -> {client: reply bytes or ClientFailure}``;
            ``None``: one in-process :class:`SecAggParty` per participant (:attr:`clients`). A client that
            fails at a stage is a dropout.
    """

    def __init__(self, config: SecureAggregationConfig, server_round: int, participants: list[str],
                 vector_length: int, seed: int = 0, dropouts: Mapping[str, Collection[str]] | None = None,
                 transport: Transport | None = None) -> None:
        unknown = set(dropouts or {}) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown dropout stages {sorted(unknown)}; stages are {STAGES}")
        self.server = SecAggServer(config, server_round, participants, vector_length + 1, seed)
        self.clients = {c: SecAggParty(c, config) for c in participants} if transport is None else {}
        self.transport = transport or self._in_process
        self.dropouts = {stage: set((dropouts or {}).get(stage, ())) for stage in STAGES}
        self.bytes_sent: Counter[str] = Counter()
        self.bytes_received: Counter[str] = Counter()
        self.failures: dict[str, str] = {}  # client -> why it dropped out (a failure, not an injected dropout)
        self.alive = set(participants)

    def _in_process(self, method: str, requests: Mapping[str, bytes]) -> dict[str, bytes]:
        return {c: getattr(self.clients[c], method)(message) for c, message in requests.items()}

    def _exchange(self, stage: str | None, method: str, requests: Mapping[str, bytes]) -> dict[str, object]:
        """Server -> each live client's request; their decoded replies. A client that fails, or that drops out
        at ``stage``, is no longer alive."""
        live = {c: message for c, message in requests.items() if c in self.alive}
        for client_id, message in live.items():
            self.bytes_received[client_id] += len(message)
        replies = {}
        for client_id, reply in self.transport(method, live).items():
            if isinstance(reply, ClientFailure):
                self.failures[client_id] = reply.reason
                self.alive.discard(client_id)
            elif stage is not None and client_id in self.dropouts[stage]:
                self.alive.discard(client_id)
            else:
                self.bytes_sent[client_id] += len(reply)
                replies[client_id] = decode(reply) if reply else None
        return replies

    def exchange_keys(self) -> list[str]:
        """Stages 1 and 2; returns the clients that may now send masked inputs."""
        setup = encode(self.server.setup)
        adverts = self._exchange("advertise", "secagg_setup", {c: setup for c in sorted(self.alive)})
        neighbour_keys = self.server.receive_keys(list(adverts.values()))
        shares = self._exchange("share", "secagg_share", {c: encode(m) for c, m in neighbour_keys.items()})
        forwarded = self.server.receive_shares(list(shares.values()))
        self._exchange(None, "secagg_receive_shares", {c: encode(m) for c, m in forwarded.items()})
        return sorted(self.alive & self.server.sharers)

    def submit(self, client_id: str, wire: bytes) -> None:
        """Stage 3 for one client: its encoded :class:`MaskedInput` (dropped if it drops out here)."""
        if client_id in self.dropouts["masked_input"] or client_id not in self.alive:
            self.alive.discard(client_id)
            return
        self.bytes_sent[client_id] += len(wire)
        message = decode(wire)
        if not isinstance(message, MaskedInput):
            raise ProtocolError(f"client '{client_id}' sent a {type(message).__name__}, not a MaskedInput")
        self.server.receive_masked_input(message)

    def mask_and_submit(self, update_of: Callable[[str], tuple[np.ndarray, int]]) -> None:
        """Stage 3 for every live in-process client: ``update_of(client_id)`` gives its flat update and count."""
        for client_id in self.exchange_keys():
            self.submit(client_id, encode(self.clients[client_id].secagg.mask(*update_of(client_id))))

    def finish(self) -> tuple[np.ndarray, float]:
        """Stage 4: the sum of survivors' weighted updates and of their example counts."""
        request = encode(self.server.unmask_request())
        responses = self._exchange("unmask", "secagg_unmask", {c: request for c in sorted(self.server.survivors)})
        return self.server.finish(list(responses.values()))
