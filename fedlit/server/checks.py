"""Set-up checks before any model work: settings that could never train are refused, each error naming the key and
value."""

from __future__ import annotations

from collections.abc import Sequence

from fedlit.client import Client
from fedlit.data.federated import GLOBAL
from fedlit.federation import Federation


def check_federation(clients: Sequence[Client], federation: Federation) -> None:
    """Refuse settings that could never train, before any model work: each error names the key and value."""
    strategy, faults = federation.strategy, federation.faults
    secure_aggregation = federation.secure_aggregation
    ids = [c.client_id for c in clients]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate client ids: {duplicates}")
    if not ids:
        raise ValueError("the federation has no clients (data.clients / data.num_clients)")
    if GLOBAL in ids:
        raise ValueError(f"'{GLOBAL}' is reserved for the server's held-out split; rename that client")
    if federation.watermark is not None:
        federation.watermark.check_clients(ids)
    for key in ("rounds", "eval_every"):
        if getattr(federation, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(federation, key)}")
    try:
        per_round = strategy.sample_size(len(ids))
    except ValueError as error:
        raise ValueError(f"strategy.clients_per_round: {error}") from None
    if faults.min_clients > per_round:
        raise ValueError(f"faults.min_clients is {faults.min_clients} but only {per_round} clients are sampled per "
                         "round (strategy.clients_per_round): no round could ever be aggregated")
    if secure_aggregation is not None:  # (client-level DP refuses such a strategy when DPFedAvg wraps it)
        if strategy.needs_individual_updates:
            raise ValueError(f"{type(strategy).__name__} needs each client's update, which secure aggregation hides:"
                             " use a strategy that works on the mean update (FedAvg, FedAvgM, FedAdam, ...)")
        secure_aggregation.check_round_size(per_round)
        secure_aggregation.warn_if_capped(per_round)
        if federation.compression is None:  # (a compressed round's ring is sized to fit)
            secure_aggregation.check_ring(per_round, federation.weight_bound(train_sizes(clients)))


def train_sizes(clients: Sequence[Client]) -> list[int]:
    return [len(c.datamodule.train_dataset) for c in clients]
