"""Clients of different LoRA ranks (a strategy wrapper): each client is sent the global adapter's first r_i
components, trains them (the client mod :mod:`fedlit.client.mods.rank_limit`) and sends them back, and the server
combines the factors zero-padded to the global rank
either HetLoRA-style (Cho et al. 2024: each rank component averaged over the clients that have it) or
FlexLoRA-style (Bai et al. 2024: the mean of the products ``B_i A_i`` factored back by SVD, components in order of
singular value, so that a client's truncation is the best approximation at its rank)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

from fedlit.payload import Payload, Update
from fedlit.strategies.base import Strategy, weighted_average
from fedlit.strategies.fedavg import FedAvg
from fedlit.strategies.lora_factors import (
    lora_pairs,
    max_rank,
    padded_average,
    padded_to,
    share_of_rank,
    svd_redistributed,
)
from fedlit.strategies.wrapper import StrategyWrapper

NAME = "lora_rank"
REFUSED = {
    "secure_aggregation": "the aggregation needs each client's factors (per-rank weights, or the products B_i A_i)",
    "privacy": "client-level DP clips and noises the whole update, including the components beyond a client's rank",
    "example_privacy": "DP-SGD noises every component, including those beyond a client's rank",
    "compression": "a client's share travels at its own rank, in float (the codes are laid out at the global rank)",
}


class HeteroRank(StrategyWrapper):
    """``strategy`` (default FedAvg: it samples the clients and takes the server step on the combined adapter) with
    clients of different LoRA ranks. The peft config's ``r`` is the largest rank, the global adapter's.

    Args:
        ranks: each client's rank by client id: a number, or the name of a tier in ``tiers``.
        tiers: resource tiers by name -> rank (e.g. ``{small: 4, large: 32}``).
        default_rank: the rank of a client ``ranks`` does not name (``None``: every client must be named).
        aggregation: ``svd`` (FlexLoRA) or ``padding`` (HetLoRA).
        strategy: the wrapped strategy.
    """

    def __init__(self, ranks: dict[str, int | str] | None = None, tiers: dict[str, int] | None = None,
                 default_rank: int | None = None, aggregation: Literal["svd", "padding"] = "svd",
                 strategy: Strategy | None = None) -> None:
        super().__init__(strategy if strategy is not None else FedAvg())
        if aggregation not in ("svd", "padding"):
            raise ValueError(f"hetero_rank: aggregation must be svd or padding, got {aggregation!r}")
        self.tiers, self.default_rank, self.aggregation = dict(tiers or {}), default_rank, aggregation
        unknown = sorted({str(r) for r in (ranks or {}).values() if isinstance(r, str) and r not in self.tiers})
        if unknown:
            raise ValueError(f"hetero_rank: ranks name tier(s) {unknown} that tiers does not define "
                             f"(tiers: {sorted(self.tiers)})")
        self.ranks = {cid: self.tiers[r] if isinstance(r, str) else int(r) for cid, r in (ranks or {}).items()}
        self.needs_individual_updates = True

    def refused_settings(self) -> dict[str, str]:
        return {**self.inner.refused_settings(), **REFUSED}

    def rank_of(self, client_id: str) -> int:
        rank = self.ranks.get(client_id, self.default_rank)
        if rank is None:
            raise ValueError(f"hetero_rank: client '{client_id}' has no rank (name it in ranks, or set default_rank)")
        return rank

    def initial(self, payload: Payload) -> Payload:
        payload = self.inner.initial(payload)
        largest = max_rank(payload)
        wrong = {cid: r for cid, r in {**self.ranks, "(default)": self.default_rank}.items()
                 if r is not None and not 1 <= r <= largest}
        if wrong:
            raise ValueError(f"hetero_rank: ranks {wrong} are outside 1..{largest} (the adapter's r, the largest "
                             "rank: set peft's r to it)")
        return payload

    def configure_round(self, server_round: int, client_ids: Sequence[str], seed: int) -> list[str]:
        strangers = sorted(set(self.ranks) - set(client_ids))
        if strangers:
            raise ValueError(f"hetero_rank: ranks name client(s) {strangers} that the federation does not have")
        for client_id in client_ids:
            self.rank_of(client_id)
        return self.inner.configure_round(server_round, client_ids, seed)

    def fit_payload(self, global_payload: Payload, client_id: str) -> Payload:
        """The client's share: the first ``rank`` components of every LoRA pair (``A[:r]``, ``B[:, :r]``), so that
        what travels, both ways, grows with the client's rank, not the global one."""
        payload = self.inner.fit_payload(global_payload, client_id)
        return share_of_rank(payload, self.rank_of(client_id))

    def received_update(self, payload: Payload, client_id: str, global_payload: Payload) -> Payload:
        """The client's factors zero-padded to the global rank (the components it does not have count for nothing
        in either aggregation)."""
        return self.inner.received_update(padded_to(payload, max_rank(global_payload)), client_id, global_payload)

    def fit_plan(self, masked: bool) -> dict[str, dict[str, Any]]:
        return {**self.inner.fit_plan(masked), NAME: {"ranks": dict(self.ranks), "default": self.default_rank}}

    def aggregate(self, global_payload: Payload, updates: Sequence[Update]) -> Payload:
        weights = [float(u.num_examples) for u in updates]
        ranks = [self.rank_of(u.client_id) for u in updates]
        combined = weighted_average([u.payload for u in updates], weights)  # (every tensor that is no LoRA factor)
        largest = max_rank(global_payload)
        for a_name, b_name in lora_pairs(list(global_payload)).items():
            a_factors, b_factors = [u.payload[a_name] for u in updates], [u.payload[b_name] for u in updates]
            if self.aggregation == "svd":
                combined[a_name], combined[b_name] = svd_redistributed(a_factors, b_factors, weights, largest)
            else:
                combined[a_name] = padded_average(a_factors, ranks, weights, global_payload[a_name], 0)
                combined[b_name] = padded_average(b_factors, ranks, weights, global_payload[b_name], 1)
        return self.inner.step(global_payload, OrderedDict((n, combined[n]) for n in global_payload))

    def aggregate_masked(self, global_payload: Payload, summed, total: float) -> Payload:
        raise ValueError(f"hetero_rank with secure_aggregation: {REFUSED['secure_aggregation']}")
