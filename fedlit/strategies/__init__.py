"""Server aggregation strategies: orchestration in :class:`Strategy`, math in pure functions."""

from fedlit.strategies.base import Strategy, weighted_average
from fedlit.strategies.dp import DPFedAvg
from fedlit.strategies.fedavg import FedAvg
from fedlit.strategies.fedopt import FedAdagrad, FedAdam, FedAdaptive, FedAvgM, FedYogi, pseudo_gradient
from fedlit.strategies.hetero_rank import HeteroRank
from fedlit.strategies.knowledge import KnowledgeGathering
from fedlit.strategies.median import FedMedian
from fedlit.strategies.robust import FedAvgNormBound, FedTrimmedMean
from fedlit.strategies.round_schedule import CosineRoundLR, cosine_learning_rate
from fedlit.strategies.scaffold import Scaffold

__all__ = [
    "CosineRoundLR",
    "DPFedAvg",
    "FedAdagrad",
    "FedAdam",
    "FedAdaptive",
    "FedAvg",
    "FedAvgNormBound",
    "FedAvgM",
    "FedMedian",
    "FedTrimmedMean",
    "FedYogi",
    "HeteroRank",
    "KnowledgeGathering",
    "Scaffold",
    "Strategy",
    "cosine_learning_rate",
    "pseudo_gradient",
    "weighted_average",
]
