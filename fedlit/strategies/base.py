"""Server strategy: which clients take part in a round (orchestration) and how their updates combine (math)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedlit.payload import Payload, Update, flatten, unflatten


def weighted_average(payloads: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> Payload:
    """sum_k w_k * x_k / sum_k w_k per tensor, accumulated in float64 and cast back to each tensor's dtype."""
    if not payloads:
        raise ValueError("weighted_average needs at least one payload")
    if len(payloads) != len(weights):
        raise ValueError(f"{len(payloads)} payloads but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must sum to a positive number, got {list(weights)}")
    averaged = OrderedDict()
    for name, first in payloads[0].items():
        acc = torch.zeros(first.shape, dtype=torch.float64)
        for payload, weight in zip(payloads, weights, strict=True):
            acc += payload[name].to(torch.float64) * (weight / total)
        averaged[name] = acc.to(first.dtype)
    return averaged


def shifted(payload: Payload, vector: np.ndarray) -> Payload:
    """``payload`` moved by a flat update (as :func:`~fedlit.payload.flatten` orders it): the "average adapter"
    that a mean update leads to."""
    return unflatten(flatten(payload) + vector, payload)


class Strategy:
    """Base class. Most strategies only need the example-weighted mean of the client adapters, which is all
    that secure aggregation reveals: they implement :meth:`step`. A strategy that needs each client's
    update (a median, a robust rule) overrides :meth:`aggregate` and sets ``needs_individual_updates``.

    Args:
        clients_per_round: how many clients train each round: an int count, or a float fraction in (0, 1].
        sampling: ``fixed``: exactly that many, uniformly without replacement; ``poisson``: each client
            independently with probability clients_per_round / number of clients (what client-level DP's
            add/remove-one accounting assumes; the count varies from round to round).
    """

    needs_individual_updates: bool = False  # (an instance may say otherwise: a wrapper says what its inner says)

    def __init__(self, clients_per_round: int | float = 1.0, sampling: str = "fixed") -> None:
        if isinstance(clients_per_round, float) and not 0 < clients_per_round <= 1:
            raise ValueError(f"clients_per_round as a fraction must be in (0, 1], got {clients_per_round}")
        if isinstance(clients_per_round, int) and clients_per_round < 1:
            raise ValueError(f"clients_per_round as a count must be >= 1, got {clients_per_round}")
        if sampling not in ("fixed", "poisson"):
            raise ValueError(f"sampling must be 'fixed' or 'poisson', got '{sampling}'")
        self.clients_per_round = clients_per_round
        self.sampling = sampling

    def sample_size(self, num_clients: int) -> int:
        """Clients per round (fixed sampling), or the expected count (Poisson sampling)."""
        if isinstance(self.clients_per_round, float):
            k = max(1, round(self.clients_per_round * num_clients))
        else:
            k = self.clients_per_round
        if k > num_clients:
            raise ValueError(f"clients_per_round={k} but only {num_clients} clients exist")
        return k

    def configure_round(self, server_round: int, client_ids: Sequence[str], seed: int) -> list[str]:
        """The clients sampled for ``server_round``, in the order of ``client_ids``.

        The draw depends only on (seed, round), so a resumed run samples exactly as an uninterrupted one.
        """
        n, k = len(client_ids), self.sample_size(len(client_ids))
        rng = np.random.default_rng([seed, server_round])
        if self.sampling == "poisson":
            return [cid for cid, draw in zip(client_ids, rng.random(n), strict=True) if draw < k / n]
        chosen = sorted(rng.choice(n, size=k, replace=False).tolist())
        return [client_ids[i] for i in chosen]

    def aggregate(self, global_payload: Payload, updates: Sequence[Update]) -> Payload:
        """The new global payload from the previous one and this round's client updates."""
        return self.step(global_payload, weighted_average([u.payload for u in updates],
                                                          [u.num_examples for u in updates]))

    def aggregate_masked(self, global_payload: Payload, summed: np.ndarray, total: float) -> Payload:
        """The new global payload from what secure aggregation reveals: the sum of the clients' weighted flat
        updates and the sum of their weights."""
        return self.step(global_payload, shifted(global_payload, summed / total))

    def fit_payload(self, global_payload: Payload, client_id: str) -> Payload:
        """What ``client_id`` is sent to train from, and what its reply is read against: the global payload, or
        that client's share of it (:class:`~fedlit.strategies.HeteroRank`: the components of its rank)."""
        return global_payload

    def received_update(self, payload: Payload, client_id: str, global_payload: Payload) -> Payload:
        """A client's trained payload, read in the shapes :meth:`fit_payload` sent it, in the global payload's
        shapes for the aggregation."""
        return payload

    def fit_plan(self, masked: bool) -> dict[str, dict[str, Any]]:
        """Client mod settings for every client's fit this round, by mod name (:class:`~fedlit.backends.FitIns`'s
        ``mods``); a wrapper such as client-level DP asks for clipping. ``masked``: updates travel masked."""
        return {}

    def stop_reason(self, server_round: int) -> str | None:
        """Why the run must stop before ``server_round`` (a spent privacy budget), else ``None``."""
        return None

    # Server-side hooks around the rounds (FedCoLLM's mutual distillation, FedMKT's knowledge transfer, FedOST's
    # plug-in): a strategy wrapper overrides the ones it needs; the loop calls every one of them, always.

    def initial(self, payload: Payload) -> Payload:
        """The global payload of round 1 from the module's initial one (FedMKT adds the LLM's knowledge)."""
        return payload

    def after_round(self, payload: Payload, server_round: int, seed: int) -> tuple[Payload, list[dict[str, Any]]]:
        """Server-side work after ``server_round``'s aggregation: the payload clients get next, and server rows for
        metrics.csv (a wrapper's epsilon, a server model's training loss; a row is ``{"client": ..., "split": ...,
        "model": ..., <metric columns>}``). ``seed`` seeds the server's own training."""
        return payload, []

    def evaluate(self) -> list[dict[str, Any]]:
        """Held-out rows of the server's own models, when the loop evaluates the global adapter."""
        return []

    def save(self, output_dir: Path, payload: Payload, history: list[dict[str, Any]]) -> None:
        """Export what the server side made at the end of the run (atomically), after the final adapter."""

    def step(self, global_payload: Payload, average: Payload) -> Payload:
        """The new global payload from the previous one and the example-weighted mean of the client adapters."""
        raise TypeError(f"{type(self).__name__} needs each client's update, not only their mean")

    def refused_settings(self) -> dict[str, str]:
        """Federation settings (by key) this strategy cannot run with, and why: refused before round 0."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Server-side optimiser state to checkpoint (none for plain FedAvg)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; a stateless strategy refuses another strategy's state."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state but the checkpoint holds {sorted(state)}")
