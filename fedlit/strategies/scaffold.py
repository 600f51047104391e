"""SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning", ICML 2020) as a
strategy wrapper: the server keeps the control variate ``c``, sends it with every fit (the client mod
:mod:`fedlit.client.mods.drift_correction` corrects each local step with it) and moves it by the sampled clients'
variate changes, ``c += |S| / N * mean(delta c_i)``; the wrapped strategy aggregates the adapters as it would."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from fedlit.payload import Payload, Update, from_bytes, to_bytes
from fedlit.strategies.base import Strategy
from fedlit.strategies.fedavg import FedAvg
from fedlit.strategies.wrapper import StrategyWrapper

NAME = "scaffold"
# each client's variate change is a scaled copy of its update: what these settings hide or bound, it would reveal
REFUSED = {
    "secure_aggregation": "each client's control variate change, (x - y_i) / (its summed step sizes) - c, "
                          "reveals its update, which masking hides",
    "privacy": "each client's control variate change reveals its unclipped, un-noised update",
    "example_privacy": "DP-SGD noises the gradient after SCAFFOLD would correct it, and the variate change "
                       "would carry the un-noised drift",
}


class Scaffold(StrategyWrapper):
    """``strategy`` (default FedAvg) with SCAFFOLD's control variates (option II: a client's new variate from its
    own model change). Works under partial participation: ``N`` is the number of clients the round was sampled
    from. The variate is checkpointed with the strategy, so a resumed run continues with it.

    Args:
        strategy: samples the clients and aggregates the adapters (FedAvg, FedAdam, ...).
        server_lr: the global step size on the aggregated adapter update (SCAFFOLD's ``eta_g``; 1: the
            wrapped strategy's aggregate as it is).
    """

    def __init__(self, strategy: Strategy | None = None, server_lr: float = 1.0) -> None:
        super().__init__(strategy if strategy is not None else FedAvg())
        if not server_lr > 0:
            raise ValueError(f"scaffold: server_lr must be > 0, got {server_lr}")
        self.server_lr = server_lr
        self.needs_individual_updates = True  # (each client's variate change, beside its update)
        self.control: Payload | None = None
        self.population = 0

    def refused_settings(self) -> dict[str, str]:
        return {**self.inner.refused_settings(), **REFUSED}

    def initial(self, payload: Payload) -> Payload:
        payload = self.inner.initial(payload)
        if self.control is None:  # (a resumed run has its variate back from the checkpoint)
            self.control = OrderedDict((n, torch.zeros_like(t, dtype=torch.float32)) for n, t in payload.items()
                                       if t.is_floating_point())
        return payload

    def configure_round(self, server_round: int, client_ids: Sequence[str], seed: int) -> list[str]:
        self.population = len(client_ids)
        return self.inner.configure_round(server_round, client_ids, seed)

    def fit_plan(self, masked: bool) -> dict[str, dict[str, Any]]:
        return {**self.inner.fit_plan(masked), NAME: {"control": to_bytes(self.control)}}

    def aggregate(self, global_payload: Payload, updates: Sequence[Update]) -> Payload:
        changes = []
        for update in updates:
            if NAME not in update.mods:
                raise ValueError(f"client '{update.client_id}' sent no SCAFFOLD control variate change (its "
                                 "client does not run the drift_correction mod)")
            changes.append(from_bytes(update.mods[NAME]["change"]))
        scale = len(updates) / max(self.population, len(updates))
        for name in self.control:
            mean = torch.stack([change[name].float() for change in changes]).mean(0)
            self.control[name] = self.control[name] + scale * mean
        aggregated = self.inner.aggregate(global_payload, updates)
        if self.server_lr == 1.0:
            return aggregated
        return OrderedDict((n, t + self.server_lr * (aggregated[n] - t) if t.is_floating_point() else aggregated[n])
                           for n, t in global_payload.items())

    def aggregate_masked(self, global_payload: Payload, summed, total: float) -> Payload:
        raise ValueError(f"scaffold with secure_aggregation: {REFUSED['secure_aggregation']}")

    def state_dict(self) -> dict[str, Any]:
        return {**self.inner.state_dict(), NAME: {"control": dict(self.control or {})}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        own = state.get(NAME)
        self.inner.load_state_dict({k: v for k, v in state.items() if k != NAME})
        if own is not None:
            self.control = OrderedDict(sorted(own["control"].items()))
