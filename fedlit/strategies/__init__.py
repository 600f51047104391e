"""Server aggregation strategies: orchestration in :class:`Strategy`, math in pure functions."""

from fedlit.strategies.base import Strategy
from fedlit.strategies.fedavg import FedAvg, weighted_average
from fedlit.strategies.fedopt import FedAdagrad, FedAdam, FedAdaptive, FedAvgM, FedYogi, pseudo_gradient

__all__ = [
    "FedAdagrad",
    "FedAdam",
    "FedAdaptive",
    "FedAvg",
    "FedAvgM",
    "FedYogi",
    "Strategy",
    "pseudo_gradient",
    "weighted_average",
]
