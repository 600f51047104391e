"""FedAvg (McMahan et al., 2017): the global adapter is the example-weighted mean of the client adapters."""

from __future__ import annotations

from fedlit.payload import Payload
from fedlit.strategies.base import Strategy


class FedAvg(Strategy):
    """Weighted by each client's number of training examples."""

    def step(self, global_payload: Payload, average: Payload) -> Payload:
        return average
