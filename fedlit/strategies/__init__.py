"""Server aggregation strategies: orchestration in :class:`Strategy`, math in pure functions."""

from fedlit.strategies.base import Strategy
from fedlit.strategies.fedavg import FedAvg, weighted_average

__all__ = ["FedAvg", "Strategy", "weighted_average"]
