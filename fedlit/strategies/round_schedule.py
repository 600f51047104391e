"""A learning rate that changes from round to round (a strategy wrapper): FlowerTune's protocol anneals each round's
client learning rate on a cosine from ``lr_max`` to ``lr_min`` over the run, constant within a round's local steps.
The client mod :mod:`fedlit.client.mods.round_learning_rate` applies it to the client's optimiser."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fedlit.strategies.base import Strategy
from fedlit.strategies.fedavg import FedAvg
from fedlit.strategies.wrapper import StrategyWrapper

NAME = "round_lr"


def cosine_learning_rate(server_round: int, rounds: int, lr_max: float, lr_min: float) -> float:
    """``lr_min + (lr_max - lr_min) * (1 + cos(pi * (round - 1) / rounds)) / 2``: ``lr_max`` in round 1, falling
    towards ``lr_min`` by the last."""
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * (server_round - 1) / rounds))


class CosineRoundLR(StrategyWrapper):
    """``strategy`` (default FedAvg) whose clients train round ``t`` at ``cosine_learning_rate(t, rounds, ...)``
    (the optimiser's own schedule, e.g. warm-up, still shapes the steps within the round).

    Args:
        lr_max: round 1's learning rate.
        lr_min: the floor the cosine falls towards.
        rounds: the run's rounds (the cosine's length).
        strategy: the wrapped strategy.
    """

    def __init__(self, lr_max: float, lr_min: float, rounds: int, strategy: Strategy | None = None) -> None:
        super().__init__(strategy if strategy is not None else FedAvg())
        if not 0 <= lr_min <= lr_max or rounds < 1:
            raise ValueError(f"cosine_round_lr: need 0 <= lr_min <= lr_max and rounds >= 1, got lr_min {lr_min}, "
                             f"lr_max {lr_max}, rounds {rounds}")
        self.lr_max, self.lr_min, self.rounds = lr_max, lr_min, rounds
        self.server_round = 1

    def configure_round(self, server_round: int, client_ids: Sequence[str], seed: int) -> list[str]:
        self.server_round = server_round
        return self.inner.configure_round(server_round, client_ids, seed)

    def fit_plan(self, masked: bool) -> dict[str, dict[str, Any]]:
        lr = cosine_learning_rate(self.server_round, self.rounds, self.lr_max, self.lr_min)
        return {**self.inner.fit_plan(masked), NAME: {"lr": lr}}
