"""Knowledge is not averaged: FedMKT's server distils from each client's knowledge on the public texts. This
wrapper keeps each client's knowledge apart (under its client id) and lets the wrapped strategy aggregate the rest
of the payload (the SLM adapters in FedMKT's homogeneous mode) and choose the clients."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from fedlit.payload import Payload, Update, split
from fedlit.strategies.base import Strategy
from fedlit.strategies.wrapper import StrategyWrapper


def per_client(gathered: Payload) -> tuple[dict[str, Payload], Payload]:
    """Undo :class:`KnowledgeGathering`'s naming: (client id -> its tensors under their own names, the rest)."""
    clients: dict[str, Payload] = {}
    rest = OrderedDict()
    for name, tensor in gathered.items():
        client, _, own = name.rpartition("/")
        (clients.setdefault(client, OrderedDict()) if client else rest)[own] = tensor
    return clients, rest


class KnowledgeGathering(StrategyWrapper):
    """``strategy`` for the payload's tensors outside ``prefix``; the ones inside travel on per client, renamed
    ``<client id>/<name>``, for the server step to use."""

    def __init__(self, strategy: Strategy, prefix: str) -> None:
        super().__init__(strategy)
        self.prefix = prefix
        self.needs_individual_updates = True

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
