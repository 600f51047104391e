"""FedMedian (Yin et al., "Byzantine-Robust Distributed Learning", 2018): the coordinate-wise median of the
client adapters, robust to a minority of outlying clients. It needs every client's update, so it cannot
run under secure aggregation."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

from fedlit.payload import Payload, Update
from fedlit.strategies.base import Strategy


class FedMedian(Strategy):
    """Coordinate-wise median (the mean of the two middle values for an even count); unweighted."""

    needs_individual_updates = True

    def aggregate(self, global_payload: Payload, updates: Sequence[Update]) -> Payload:
        if not updates:
            raise ValueError("FedMedian needs at least one update")
        k = len(updates)
        median = OrderedDict()
        for name, tensor in global_payload.items():
            ordered = torch.stack([u.payload[name].to(torch.float64) for u in updates]).sort(dim=0).values
            median[name] = ((ordered[(k - 1) // 2] + ordered[k // 2]) / 2).to(tensor.dtype)
        return median
