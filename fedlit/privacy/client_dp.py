"""Client-level differential privacy (DP-FedAvg, McMahan et al. 2018, "Learning Differentially Private Recurrent
Language Models"): every client's update is clipped to L2 norm ``clip_norm``, Gaussian noise of standard
deviation ``noise_multiplier * clip_norm`` is added to their sum, and the sum is divided by a fixed
denominator (the expected number of clients), so one client moves the result by a bounded amount.
dp-accounting's RDP accountant turns noise, client sampling and rounds into (epsilon, delta)."""

from __future__ import annotations

from dataclasses import dataclass

import dp_accounting
import numpy as np

from fedlit.strategies import Strategy


@dataclass
class ClientDPConfig:
    """DP-FedAvg settings.

    Args:
        noise_multiplier: noise std over ``clip_norm`` (sigma).
        clip_norm: L2 bound of each client's update (trained adapter - global adapter), over all its tensors.
        delta: the delta of the reported (epsilon, delta); keep it well below 1 / number of clients.
        target_epsilon: stop before the round that would take epsilon past this; ``None``: never stop.
    """

    noise_multiplier: float = 1.0
    clip_norm: float = 0.1
    delta: float = 1e-5
    target_epsilon: float | None = None

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0 or self.clip_norm <= 0 or not 0 < self.delta < 1:
            raise ValueError(f"privacy: need noise_multiplier >= 0, clip_norm > 0 and 0 < delta < 1, got "
                             f"{self.noise_multiplier}, {self.clip_norm} and {self.delta}")
        if self.target_epsilon is not None and self.target_epsilon <= 0:
            raise ValueError(f"privacy.target_epsilon must be > 0, got {self.target_epsilon}")


def clip_to_norm(update: np.ndarray, clip_norm: float) -> np.ndarray:
    """``update`` scaled down to L2 norm ``clip_norm`` when it is longer; unchanged otherwise."""
    norm = float(np.linalg.norm(update))
    return update * (clip_norm / norm) if norm > clip_norm else update


def gaussian_noise(length: int, std: float, seed: int) -> np.ndarray:
    """``length`` draws of N(0, std^2), reproducible from ``seed`` (so a resumed round draws the same noise)."""
    return np.random.default_rng(seed).normal(0.0, std, size=length)


class ClientPrivacyAccountant:
    """(epsilon, delta) of DP-FedAvg after any number of rounds, from dp-accounting's RDP accountant.

    Poisson client sampling (each client independently with probability q) is accounted under add/remove-one
    neighbours: one client changes the noisy sum by at most ``clip_norm``. Fixed-size sampling (m of N without
    replacement) is accounted under replace-one neighbours, where the sum can move by 2 ``clip_norm``, so the
    accountant sees noise multiplier sigma / 2.
    """

    def __init__(self, config: ClientDPConfig, strategy: Strategy, num_clients: int) -> None:
        self.config = config
        self.poisson = strategy.sampling == "poisson"
        self.num_clients = num_clients
        self.sample_size = strategy.sample_size(num_clients)

    @property
    def expected_clients(self) -> float:
        """The fixed denominator of the noisy mean: the expected number of sampled clients."""
        return float(self.sample_size)

    def event(self, rounds: int) -> dp_accounting.DpEvent:
        """The dp-accounting event of ``rounds`` rounds."""
        sigma = self.config.noise_multiplier
        if self.poisson:
            one = dp_accounting.PoissonSampledDpEvent(self.sample_size / self.num_clients,
                                                      dp_accounting.GaussianDpEvent(sigma))
        else:
            one = dp_accounting.SampledWithoutReplacementDpEvent(self.num_clients, self.sample_size,
                                                                 dp_accounting.GaussianDpEvent(sigma / 2))
        return dp_accounting.SelfComposedDpEvent(one, rounds)

    def epsilon(self, rounds: int) -> float:
        """Epsilon at ``config.delta`` after ``rounds`` rounds (0 rounds: 0; no noise: infinity)."""
        if rounds == 0:
            return 0.0
        if self.config.noise_multiplier == 0:
            return float("inf")
        relation = (dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE if self.poisson
                    else dp_accounting.NeighboringRelation.REPLACE_ONE)
        accountant = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
        accountant.compose(self.event(rounds))
        return float(accountant.get_epsilon(self.config.delta))
