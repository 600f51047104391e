"""Differential privacy: client-level DP-FedAvg with an RDP accountant, example-level DP-SGD, and the token
perturbation of private inference (:mod:`fedlit.privacy.inference`)."""

from fedlit.privacy.client_dp import (
    ClientDPConfig,
    ClientPrivacyAccountant,
    clip_to_norm,
    gaussian_noise,
    subsampled_gaussian_epsilon,
)
from fedlit.privacy.example_dp import ExampleDPConfig, RandomSubsetBatches

__all__ = ["ClientDPConfig", "ClientPrivacyAccountant", "ExampleDPConfig", "RandomSubsetBatches", "clip_to_norm",
           "gaussian_noise", "subsampled_gaussian_epsilon"]
