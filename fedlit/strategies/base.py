"""Server strategy: which clients take part in a round (orchestration) and how their updates combine (math)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedlit.payload import Payload, Update


class Strategy(ABC):
    """Base class; subclasses implement :meth:`aggregate` as pure tensor math.

    Args:
        clients_per_round: how many clients train each round: an int count, or a float fraction in (0, 1].
    """

    def __init__(self, clients_per_round: int | float = 1.0) -> None:
        if isinstance(clients_per_round, float) and not 0 < clients_per_round <= 1:
            raise ValueError(f"clients_per_round as a fraction must be in (0, 1], got {clients_per_round}")
        if isinstance(clients_per_round, int) and clients_per_round < 1:
            raise ValueError(f"clients_per_round as a count must be >= 1, got {clients_per_round}")
        self.clients_per_round = clients_per_round

    def configure_round(self, server_round: int, client_ids: Sequence[str], seed: int) -> list[str]:
        """The clients sampled for ``server_round``, without replacement, in the order of ``client_ids``.

        The draw depends only on (seed, round), so a resumed run samples exactly as an uninterrupted one.
        """
        n = len(client_ids)
        if isinstance(self.clients_per_round, float):
            k = max(1, round(self.clients_per_round * n))
        else:
            k = self.clients_per_round
        if k > n:
            raise ValueError(f"clients_per_round={k} but only {n} clients exist")
        rng = np.random.default_rng([seed, server_round])
        chosen = sorted(rng.choice(n, size=k, replace=False).tolist())
        return [client_ids[i] for i in chosen]

    @abstractmethod
    def aggregate(self, global_payload: Payload, updates: Sequence[Update]) -> Payload:
        """The new global payload from the previous one and this round's client updates."""

    def state_dict(self) -> dict[str, Any]:
        """Server-side optimiser state to checkpoint (none for plain FedAvg)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; a stateless strategy refuses another strategy's state."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state but the checkpoint holds {sorted(state)}")
