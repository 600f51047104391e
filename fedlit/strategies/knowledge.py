"""Knowledge is not averaged: FedMKT's server distils from each client's knowledge on the public texts. This
wrapper keeps each client's knowledge apart (under its client id) and lets the wrapped strategy aggregate the rest
of the payload (the SLM adapters in FedMKT's homogeneous mode) and choose the clients."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from fedlit.payload import Payload, Update, split
from fedlit.strategies.base import Strategy


def per_client(gathered: Payload) -> tuple[dict[str, Payload], Payload]:
    """Undo :class:`KnowledgeGathering`'s naming: (client id -> its tensors under their own names, the rest)."""
    clients: dict[str, Payload] = {}
    rest = OrderedDict()
    for name, tensor in gathered.items():
        client, _, own = name.rpartition("/")
        (clients.setdefault(client, OrderedDict()) if client else rest)[own] = tensor
    return clients, rest


class KnowledgeGathering(Strategy):
    """``strategy`` for the payload's tensors outside ``prefix``; the ones inside travel on per client, renamed
    ``<client id>/<name>``, for the server step to use."""

    needs_individual_updates = True

    def __init__(self, strategy: Strategy, prefix: str) -> None:
        super().__init__(strategy.clients_per_round, strategy.sampling)
        self.inner, self.prefix = strategy, prefix

    def configure_round(self, server_round: int, client_ids: Sequence[str], seed: int) -> list[str]:
        return self.inner.configure_round(server_round, client_ids, seed)

    def aggregate(self, global_payload: Payload, updates: Sequence[Update]) -> Payload:
        _, rest = split(global_payload, self.prefix)
        gathered = OrderedDict()
        for update in updates:
            knowledge, _ = split(update.payload, self.prefix)
            gathered.update((f"{update.client_id}/{name}", t) for name, t in knowledge.items())
        if rest:
            rests = [Update(u.client_id, split(u.payload, self.prefix)[1], u.num_examples, u.metrics) for u in updates]
            gathered.update(self.inner.aggregate(rest, rests))
        return gathered

    def round_rows(self, server_round: int) -> list[dict[str, Any]]:
        return self.inner.round_rows(server_round)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)
