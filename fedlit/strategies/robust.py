"""Robust aggregation rules beyond the median, for federations where some clients may send outliers. Both need
every client's update, so they cannot run under secure aggregation or client-level DP."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from fedlit.payload import Payload, Update, flatten, unflatten
from fedlit.strategies.base import Strategy, weighted_average


class FedTrimmedMean(Strategy):
    """Coordinate-wise trimmed mean (Yin et al., 2018): per coordinate, drop the ``trim`` fraction of largest and
    of smallest client values and average the rest (unweighted).

    Args:
        trim: fraction cut from each end, in [0, 0.5); at least one value always remains.
    """

    needs_individual_updates = True

    def __init__(self, clients_per_round: int | float = 1.0, trim: float = 0.1, sampling: str = "fixed") -> None:
        super().__init__(clients_per_round, sampling)
        if not 0 <= trim < 0.5:
            raise ValueError(f"FedTrimmedMean: trim must be in [0, 0.5), got {trim}")
        self.trim = trim

    def aggregate(self, global_payload: Payload, updates: Sequence[Update]) -> Payload:
        k = len(updates)
        cut = min(math.floor(self.trim * k), (k - 1) // 2)
        trimmed = OrderedDict()
        for name, tensor in global_payload.items():
            ordered = torch.stack([u.payload[name].to(torch.float64) for u in updates]).sort(dim=0).values
            trimmed[name] = ordered[cut: k - cut].mean(dim=0).to(tensor.dtype)
        return trimmed


class FedAvgNormBound(Strategy):
    """FedAvg of updates first scaled down to L2 norm ``bound`` (norm bounding, Sun et al., 2019, "Can You Really
    Backdoor Federated Learning?"): one client moves the global adapter by at most its share of ``bound``.

    Args:
        bound: L2 bound of each update (client adapter - global adapter), over all its tensors.
    """

    needs_individual_updates = True

    def __init__(self, clients_per_round: int | float = 1.0, bound: float = 1.0, sampling: str = "fixed") -> None:
        super().__init__(clients_per_round, sampling)
        if bound <= 0:
            raise ValueError(f"FedAvgNormBound: bound must be > 0, got {bound}")
        self.bound = bound

    def aggregate(self, global_payload: Payload, updates: Sequence[Update]) -> Payload:
        start = flatten(global_payload)
        bounded = []
        for update in updates:
            delta = flatten(update.payload) - start
            norm = float(np.linalg.norm(delta))
            bounded.append(unflatten(start + delta * min(1.0, self.bound / norm) if norm else start, global_payload))
        return weighted_average(bounded, [u.num_examples for u in updates])
