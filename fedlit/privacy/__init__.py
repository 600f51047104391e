"""Differential privacy: client-level DP-FedAvg with an RDP accountant, example-level DP-SGD, and every party's own
secret its protective randomness comes from (private inference's perturbation: :mod:`fedlit.inference.perturbation`).
"""

from fedlit.privacy.client_dp import (
    ClientDPConfig,
    ClientPrivacyAccountant,
    clip_to_norm,
    subsampled_gaussian_epsilon,
)
from fedlit.privacy.example_dp import ExampleDPConfig, RandomSubsetBatches
from fedlit.privacy.party_secret import PartySecret

__all__ = ["ClientDPConfig", "ClientPrivacyAccountant", "ExampleDPConfig", "PartySecret", "RandomSubsetBatches",
           "clip_to_norm", "subsampled_gaussian_epsilon"]
