"""A strategy that wraps another: it forwards every part of the strategy interface to the inner strategy, so a
wrapper overrides only what it changes (client-level DP: the fit plan, noisy aggregation, accounting; FedMKT's
knowledge gathering: aggregation; an algorithm's server side: the server hooks) and never silently drops what the
inner strategy asks for (its fit plan, its reason to stop, its server work and rows, its state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedlit.payload import Payload, Update
from fedlit.strategies.base import Strategy


class StrategyWrapper(Strategy):
    """``inner`` with nothing changed; subclasses override what they change."""

    def __init__(self, inner: Strategy) -> None:
        super().__init__(inner.clients_per_round, inner.sampling)
        self.inner = inner
        self.needs_individual_updates = inner.needs_individual_updates

    def configure_round(self, server_round: int, client_ids: Sequence[str], seed: int) -> list[str]:
        return self.inner.configure_round(server_round, client_ids, seed)

    def aggregate(self, global_payload: Payload, updates: Sequence[Update]) -> Payload:
        return self.inner.aggregate(global_payload, updates)

    def aggregate_masked(self, global_payload: Payload, summed: np.ndarray, total: float) -> Payload:
        return self.inner.aggregate_masked(global_payload, summed, total)

    def fit_payload(self, global_payload: Payload, client_id: str) -> Payload:
        return self.inner.fit_payload(global_payload, client_id)

    def received_update(self, payload: Payload, client_id: str, global_payload: Payload) -> Payload:
        return self.inner.received_update(payload, client_id, global_payload)

    def fit_plan(self, masked: bool) -> dict[str, dict[str, Any]]:
        return self.inner.fit_plan(masked)

    def stop_reason(self, server_round: int) -> str | None:
        return self.inner.stop_reason(server_round)

    def refused_settings(self) -> dict[str, str]:
        return self.inner.refused_settings()

    def initial(self, payload: Payload) -> Payload:
        return self.inner.initial(payload)

    def after_round(self, payload: Payload, server_round: int, seed: int) -> tuple[Payload, list[dict[str, Any]]]:
        return self.inner.after_round(payload, server_round, seed)

    def evaluate(self) -> list[dict[str, Any]]:
        return self.inner.evaluate()

    def save(self, output_dir: Path, payload: Payload, history: list[dict[str, Any]]) -> None:
        self.inner.save(output_dir, payload, history)

    def step(self, global_payload: Payload, average: Payload) -> Payload:
        return self.inner.step(global_payload, average)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)
