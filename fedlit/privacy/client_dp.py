"""Client-level differential privacy (DP-FedAvg, McMahan et al. 2018, "Learning Differentially Private Recurrent
Language Models"): every client's update is clipped to L2 norm ``clip_norm``, Gaussian noise of standard
deviation ``noise_multiplier * clip_norm`` is added to their sum, and the sum is divided by a fixed
denominator (the expected number of clients), so one client moves the result by a bounded amount.
An accountant turns noise, client sampling and rounds into (epsilon, delta): RDP (opacus's for Poisson sampling,
exact at fractional orders; dp-accounting's for fixed-size sampling) or, tighter, opacus's PRV accountant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import dp_accounting
import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as opacus_rdp


@dataclass
class ClientDPConfig:
    """DP-FedAvg settings.

    Args:
        noise_multiplier: noise std over ``clip_norm`` (sigma).
        clip_norm: L2 bound of each client's update (trained adapter - global adapter), over all its tensors.
        delta: the delta of the reported (epsilon, delta); keep it well below 1 / number of clients.
        target_epsilon: stop before the round that would take epsilon past this; ``None``: never stop.
        accountant: ``rdp`` (Renyi DP, the usual upper bound) or ``prv`` (opacus's privacy-random-variable
            accountant: a numerically tight epsilon, typically 6-40% lower at the same noise; Poisson client
            sampling only, ``strategy.sampling: poisson``).
    """

    noise_multiplier: float = 1.0
    clip_norm: float = 0.1
    delta: float = 1e-5
    target_epsilon: float | None = None
    accountant: Literal["rdp", "prv"] = "rdp"

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0 or self.clip_norm <= 0 or not 0 < self.delta < 1:
            raise ValueError(f"privacy: need noise_multiplier >= 0, clip_norm > 0 and 0 < delta < 1, got "
                             f"{self.noise_multiplier}, {self.clip_norm} and {self.delta}")
        if self.target_epsilon is not None and self.target_epsilon <= 0:
            raise ValueError(f"privacy.target_epsilon must be > 0, got {self.target_epsilon}")


CLIP_TOLERANCE = 1 + 1e-5  # a clipped update read back from float32 may be this much longer than the clip norm


def clip_to_norm(update: np.ndarray, clip_norm: float) -> np.ndarray:
    """``update`` scaled down to L2 norm ``clip_norm`` when it is longer; unchanged otherwise."""
    norm = float(np.linalg.norm(update))
    return update * (clip_norm / norm) if norm > clip_norm else update


def subsampled_gaussian_epsilon(population: int, sample_size: int, noise_multiplier: float, steps: int,
                                delta: float, poisson: bool, accountant: Literal["rdp", "prv"] = "rdp") -> float:
    """Epsilon at ``delta`` of ``steps`` Gaussian releases of a clipped sum over a random sample (0 steps: 0; no
    noise: infinity).

    Poisson sampling (each member independently with probability sample_size / population) is accounted under
    add/remove-one neighbours, where one member moves the sum by at most the clipping norm: with opacus's RDP
    analysis (exact at fractional orders, where dp-accounting 0.6's series fails to converge and overstates
    epsilon) or opacus's PRV accountant. Fixed-size sampling (sample_size of population without replacement)
    is accounted by dp-accounting's RDP under replace-one neighbours, where the sum can move by twice the
    clipping norm, so it sees noise multiplier sigma / 2; no PRV analysis covers it.
    """
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    if not poisson:
        if accountant != "rdp":
            raise ValueError(f"the {accountant} accountant needs Poisson sampling (strategy.sampling: poisson); "
                             "fixed-size sampling is accounted with rdp")
        one = dp_accounting.SampledWithoutReplacementDpEvent(population, sample_size,
                                                             dp_accounting.GaussianDpEvent(noise_multiplier / 2))
        rdp = dp_accounting.rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
        rdp.compose(dp_accounting.SelfComposedDpEvent(one, steps))
        return float(rdp.get_epsilon(delta))
    rate = sample_size / population
    if accountant == "prv":
        prv = PRVAccountant()
        prv.history = [(noise_multiplier, rate, steps)]
        return float(prv.get_epsilon(delta))
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = opacus_rdp.compute_rdp(q=rate, noise_multiplier=noise_multiplier, steps=steps, orders=orders)
    return float(opacus_rdp.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])


class ClientPrivacyAccountant:
    """(epsilon, delta) of DP-FedAvg after any number of rounds (see :func:`subsampled_gaussian_epsilon`).

    Args:
        config: the DP settings.
        num_clients: the federation's size.
        sample_size: clients per round (the expected count under Poisson sampling).
        poisson: clients are Poisson-sampled (else a fixed-size sample without replacement).
    """

    def __init__(self, config: ClientDPConfig, num_clients: int, sample_size: int, poisson: bool) -> None:
        if config.accountant != "rdp" and not poisson:
            raise ValueError(f"privacy.accountant {config.accountant} needs strategy.sampling: poisson "
                             "(fixed-size client sampling is accounted with rdp)")
        self.config, self.num_clients, self.sample_size, self.poisson = config, num_clients, sample_size, poisson

    @property
    def expected_clients(self) -> float:
        """The fixed denominator of the noisy mean: the expected number of sampled clients."""
        return float(self.sample_size)

    def epsilon(self, rounds: int) -> float:
        """Epsilon at ``config.delta`` after ``rounds`` rounds."""
        return subsampled_gaussian_epsilon(self.num_clients, self.sample_size, self.config.noise_multiplier, rounds,
                                           self.config.delta, self.poisson, self.config.accountant)
