"""One secure-aggregation round with every client in this process, messages passed as bytes.

What crosses between parties is exactly the encoded messages, so byte counts are real and the same
round could run with clients elsewhere. Dropouts can be injected per stage to exercise recovery.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping

import numpy as np

from fedlit.secure.config import SecureAggregationConfig
from fedlit.secure.messages import MaskedInput, decode, encode
from fedlit.secure.protocol import ProtocolError, SecAggClient, SecAggServer

STAGES = ("advertise", "share", "masked_input", "unmask")


class SecureRound:
    """Drive :class:`SecAggServer` and one :class:`SecAggClient` per participant through a round.

    Args:
        config: the protocol settings.
        server_round: binds keys and messages to this round.
        participants: client ids taking part.
        vector_length: length of each client's flattened update.
        seed: seeds the (public) neighbour graph.
        dropouts: stage name -> clients that vanish before sending that stage's message
            (``advertise``, ``share``, ``masked_input``, ``unmask``).
    """

    def __init__(self, config: SecureAggregationConfig, server_round: int, participants: list[str],
                 vector_length: int, seed: int = 0, dropouts: Mapping[str, Collection[str]] | None = None) -> None:
        unknown = set(dropouts or {}) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown dropout stages {sorted(unknown)}; stages are {STAGES}")
        self.server = SecAggServer(config, server_round, participants, vector_length + 1, seed)
        setup = decode(encode(self.server.setup))
        self.clients = {c: SecAggClient(c, config, setup) for c in participants}
        self.dropouts = {stage: set((dropouts or {}).get(stage, ())) for stage in STAGES}
        self.bytes_sent: Counter[str] = Counter()
        self.bytes_received: Counter[str] = Counter({c: len(encode(setup)) for c in participants})
        self.alive = set(participants)

    def _carry(self, messages: Mapping[str, object], counter: Counter[str]) -> dict[str, object]:
        """Each live client's message as its bytes (encoded unless already bytes), counted in ``counter``,
        decoded on the other side."""
        carried = {}
        for client_id, message in messages.items():
            if client_id in self.alive:
                wire = message if isinstance(message, bytes) else encode(message)
                counter[client_id] += len(wire)
                carried[client_id] = decode(wire)
        return carried

    def _send(self, stage: str, messages: Mapping[str, object]) -> list:
        """Client -> server: the messages of the clients still alive at ``stage``."""
        self.alive -= self.dropouts[stage]
        return list(self._carry(messages, self.bytes_sent).values())

    def _deliver(self, messages: Mapping[str, object]) -> dict[str, object]:
        """Server -> live clients."""
        return self._carry(messages, self.bytes_received)

    def exchange_keys(self) -> list[str]:
        """Stages 1 and 2; returns the clients that may now send masked inputs."""
        adverts = self._send("advertise", {c: client.advertise() for c, client in self.clients.items()
                                           if c in self.alive})
        neighbour_keys = self._deliver(self.server.receive_keys(adverts))
        shares = self._send("share", {c: self.clients[c].share(m) for c, m in neighbour_keys.items()})
        for client_id, forwarded in self._deliver(self.server.receive_shares(shares)).items():
            self.clients[client_id].receive_shares(forwarded)
        return sorted(self.alive & self.server.sharers)

    def submit(self, client_id: str, wire: bytes) -> None:
        """Stage 3 for one client: its encoded :class:`MaskedInput` (dropped if it drops out here)."""
        for message in self._send("masked_input", {client_id: wire}):
            if not isinstance(message, MaskedInput):
                raise ProtocolError(f"client '{client_id}' sent a {type(message).__name__}, not a MaskedInput")
            self.server.receive_masked_input(message)

    def mask_and_submit(self, update_of: Callable[[str], tuple[np.ndarray, int]]) -> None:
        """Stage 3 for every live client: ``update_of(client_id)`` gives its flat update and example count."""
        for client_id in self.exchange_keys():
            self.submit(client_id, encode(self.clients[client_id].mask(*update_of(client_id))))

    def finish(self) -> tuple[np.ndarray, float]:
        """Stage 4: the sum of survivors' weighted updates and of their example counts."""
        request = self._deliver({c: self.server.unmask_request() for c in self.server.survivors})
        responses = self._send("unmask", {c: self.clients[c].unmask(m) for c, m in request.items()})
        return self.server.finish(responses)
