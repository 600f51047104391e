"""FedAvg (McMahan et al., 2017): the global adapter is the example-weighted mean of the client adapters."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

from fedlit.payload import Payload, Update
from fedlit.strategies.base import Strategy


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


class FedAvg(Strategy):
    """Weighted by each client's number of training examples."""

    def aggregate(self, global_payload: Payload, updates: Sequence[Update]) -> Payload:
        return weighted_average([u.payload for u in updates], [u.num_examples for u in updates])
