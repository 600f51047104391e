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


def subsampled_gaussian_epsilon(population: int, sample_size: int, noise_multiplier: float, steps: int,
                                delta: float, poisson: bool) -> float:
    """Epsilon at ``delta`` of ``steps`` Gaussian releases of a clipped sum over a random sample, from dp-accounting's
    RDP accountant (0 steps: 0; no noise: infinity).

    Poisson sampling (each member independently with probability sample_size / population) is accounted under
    add/remove-one neighbours: one member moves the sum by at most the clipping norm. Fixed-size sampling
    (sample_size of population without replacement) is accounted under replace-one neighbours, where the sum
    can move by twice the clipping norm, so the accountant sees noise multiplier sigma / 2.
    """
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    if poisson:
        one = dp_accounting.PoissonSampledDpEvent(sample_size / population,
                                                  dp_accounting.GaussianDpEvent(noise_multiplier))
        relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    else:
        one = dp_accounting.SampledWithoutReplacementDpEvent(population, sample_size,
                                                             dp_accounting.GaussianDpEvent(noise_multiplier / 2))
        relation = dp_accounting.NeighboringRelation.REPLACE_ONE
    accountant = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
    accountant.compose(dp_accounting.SelfComposedDpEvent(one, steps))
    return float(accountant.get_epsilon(delta))


class ClientPrivacyAccountant:
    """(epsilon, delta) of DP-FedAvg after any number of rounds (see :func:`subsampled_gaussian_epsilon`)."""

    def __init__(self, config: ClientDPConfig, strategy: Strategy, num_clients: int) -> None:
        self.config = config
        self.poisson = strategy.sampling == "poisson"
        self.num_clients = num_clients
        self.sample_size = strategy.sample_size(num_clients)

    @property
    def expected_clients(self) -> float:
        """The fixed denominator of the noisy mean: the expected number of sampled clients."""
        return float(self.sample_size)

    def epsilon(self, rounds: int) -> float:
        """Epsilon at ``config.delta`` after ``rounds`` rounds."""
        return subsampled_gaussian_epsilon(self.num_clients, self.sample_size, self.config.noise_multiplier, rounds,
                                           self.config.delta, self.poisson)
