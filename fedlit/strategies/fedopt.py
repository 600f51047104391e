"""Server optimisers over the averaged client delta (the "pseudo-gradient").

FedAvgM: Hsu et al., "Measuring the Effects of Non-Identical Data Distribution", 2019.
FedAdagrad, FedAdam, FedYogi: Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2
(no bias correction; second moment initialised to tau^2).
"""

from __future__ import annotations

from abc import abstractmethod
from collections import OrderedDict
from typing import Any

import torch

from fedlit.payload import Payload
from fedlit.strategies.base import Strategy


def pseudo_gradient(global_payload: Payload, average: Payload) -> Payload:
    """Delta_t = (example-weighted mean of the client adapters) - (global adapter)."""
    return OrderedDict((name, average[name] - global_payload[name]) for name in global_payload)


class _ServerOptimizer(Strategy):
    """Keeps per-tensor server state, restored from checkpoints through state_dict/load_state_dict."""

    def __init__(self, clients_per_round: int | float = 1.0, sampling: str = "fixed") -> None:
        super().__init__(clients_per_round, sampling)
        self.state: dict[str, Payload] = {}

    def state_dict(self) -> dict[str, Any]:
        return {key: OrderedDict((n, t.clone()) for n, t in tensors.items()) for key, tensors in self.state.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = {key: OrderedDict(tensors) for key, tensors in state.items()}


class FedAvgM(_ServerOptimizer):
    """Server momentum: m_t = beta * m_{t-1} + Delta_t;  x_{t+1} = x_t + server_lr * m_t."""

    def __init__(self, clients_per_round: int | float = 1.0, server_lr: float = 1.0, momentum: float = 0.9,
                 sampling: str = "fixed") -> None:
        super().__init__(clients_per_round, sampling)
        self.server_lr, self.momentum = server_lr, momentum

    def step(self, global_payload: Payload, average: Payload) -> Payload:
        delta = pseudo_gradient(global_payload, average)
        previous = self.state.get("momentum", {})
        momentum = OrderedDict(
            (n, self.momentum * previous[n] + d if n in previous else d.clone()) for n, d in delta.items()
        )
        self.state = {"momentum": momentum}
        return OrderedDict((n, global_payload[n] + self.server_lr * momentum[n]) for n in global_payload)


class FedAdaptive(_ServerOptimizer):
    """Reddi et al. Algorithm 2. Subclasses define the second-moment update ``v_t``.

    m_t = beta1 * m_{t-1} + (1 - beta1) * Delta_t
    x_{t+1} = x_t + server_lr * m_t / (sqrt(v_t) + tau)
    """

    def __init__(
        self,
        clients_per_round: int | float = 1.0,
        server_lr: float = 1e-2,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        sampling: str = "fixed",
    ) -> None:
        super().__init__(clients_per_round, sampling)
        self.server_lr, self.beta1, self.beta2, self.tau = server_lr, beta1, beta2, tau

    @abstractmethod
    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        """v_t from v_{t-1} and Delta_t^2."""

    def step(self, global_payload: Payload, average: Payload) -> Payload:
        delta = pseudo_gradient(global_payload, average)
        m_prev = self.state.get("m") or {n: torch.zeros_like(d) for n, d in delta.items()}
        v_prev = self.state.get("v") or {n: torch.full_like(d, self.tau**2) for n, d in delta.items()}
        m = OrderedDict((n, self.beta1 * m_prev[n] + (1 - self.beta1) * d) for n, d in delta.items())
        v = OrderedDict((n, self.second_moment(v_prev[n], d * d)) for n, d in delta.items())
        self.state = {"m": m, "v": v}
        return OrderedDict(
            (n, global_payload[n] + self.server_lr * m[n] / (v[n].sqrt() + self.tau)) for n in global_payload
        )


class FedAdagrad(FedAdaptive):
    """v_t = v_{t-1} + Delta_t^2"""

    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        return v + delta_sq


class FedAdam(FedAdaptive):
    """v_t = beta2 * v_{t-1} + (1 - beta2) * Delta_t^2"""

    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        return self.beta2 * v + (1 - self.beta2) * delta_sq


class FedYogi(FedAdaptive):
    """v_t = v_{t-1} - (1 - beta2) * Delta_t^2 * sign(v_{t-1} - Delta_t^2)"""

    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        return v - (1 - self.beta2) * delta_sq * torch.sign(v - delta_sq)
