"""Differential privacy: client-level DP-FedAvg with an RDP accountant."""

from fedlit.privacy.client_dp import ClientDPConfig, ClientPrivacyAccountant, clip_to_norm, gaussian_noise

__all__ = ["ClientDPConfig", "ClientPrivacyAccountant", "clip_to_norm", "gaussian_noise"]
