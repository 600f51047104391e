"""Client-level differential privacy as a wrapper around any mean-based strategy (DP-FedAvg, McMahan et al. 2018),
after Flower's DP strategy wrappers: the wrapper asks every client to clip its update (and, when updates travel
masked, to add its share of the noise), noises the sum, divides it by a fixed denominator, accounts epsilon
after every round and says when the budget would be passed. The central noise comes from the server's own secret
(:class:`~fedlit.privacy.party_secret.PartySecret`), kept in its checkpoints, never from the config's seed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedlit.payload import Payload, Update, flatten
from fedlit.privacy.client_dp import CLIP_TOLERANCE, ClientDPConfig, ClientPrivacyAccountant, clip_to_norm
from fedlit.privacy.party_secret import PartySecret
from fedlit.strategies.base import Strategy, shifted
from fedlit.strategies.wrapper import StrategyWrapper


class DPFedAvg(StrategyWrapper):
    """``strategy`` under client-level DP.

    Args:
        strategy: samples the clients and steps from the noisy mean update (FedAvg, FedAdam, ...).
        config: clip norm, noise multiplier, delta, target epsilon, accountant.
        num_clients: the federation's size (the accountant's population).
        min_clients: the fewest updates a round aggregates: under masking each client adds noise of std
            sigma * C / sqrt(min_clients), so any aggregated sum carries at least the full noise.
        insecure_seed: derive the server's noise secret from this public number (reproducible experiments only);
            ``None``: OS entropy.
    """

    def __init__(self, strategy: Strategy, config: ClientDPConfig, num_clients: int, min_clients: int = 1,
                 insecure_seed: int | None = None) -> None:
        if strategy.needs_individual_updates:
            raise ValueError(f"{type(strategy).__name__} needs each client's update, which client-level DP hides: "
                             "use a strategy that works on the mean update (FedAvg, FedAvgM, FedAdam, ...)")
        super().__init__(strategy)
        self.config = config
        self.accountant = ClientPrivacyAccountant(config, num_clients, strategy.sample_size(num_clients),
                                                  poisson=strategy.sampling == "poisson")
        self.noise_share = config.noise_multiplier * config.clip_norm / np.sqrt(min_clients)
        self.secret = PartySecret.fresh("the server", insecure_seed)  # a resume reads back the checkpoint's
        self.server_round = 0

    def configure_round(self, server_round: int, client_ids: Sequence[str], seed: int) -> list[str]:
        self.server_round = server_round
        return self.inner.configure_round(server_round, client_ids, seed)

    def fit_plan(self, masked: bool) -> dict[str, dict[str, Any]]:
        return {**self.inner.fit_plan(masked),
                "clipping": {"clip_norm": self.config.clip_norm, "noise_std": self.noise_share if masked else 0.0}}

    def aggregate(self, global_payload: Payload, updates: Sequence[Update]) -> Payload:
        """Clipped updates in the clear: the server clips each again (a quantized update may come out a little
        longer than the client clipped it; within float tolerance this changes nothing) and adds
        N(0, (sigma C)^2) to their sum."""
        start = flatten(global_payload)
        noise = self.secret.numpy("dp-noise", self.server_round).normal(
            0.0, self.config.noise_multiplier * self.config.clip_norm, size=len(start))
        bound = self.config.clip_norm * CLIP_TOLERANCE
        summed = sum(clip_to_norm(flatten(u.payload) - start, bound) for u in updates) + noise
        return self.step(global_payload, shifted(global_payload, summed / self.accountant.expected_clients))

    def aggregate_masked(self, global_payload: Payload, summed: np.ndarray, total: float) -> Payload:
        """Unweighted, clipped, noised-in-shares updates: their sum over the fixed denominator."""
        return self.step(global_payload, shifted(global_payload, summed / self.accountant.expected_clients))

    def stop_reason(self, server_round: int) -> str | None:
        if self.config.target_epsilon is None:
            return self.inner.stop_reason(server_round)
        epsilon = self.accountant.epsilon(server_round)
        if epsilon <= self.config.target_epsilon:
            return self.inner.stop_reason(server_round)
        return (f"privacy budget: stopping before round {server_round}, which would take epsilon to {epsilon:.3f} "
                f"(target {self.config.target_epsilon:g}, delta {self.config.delta:g}); the global adapter "
                f"after round {server_round - 1} is the result")

    def after_round(self, payload: Payload, server_round: int, seed: int) -> tuple[Payload, list[dict[str, Any]]]:
        payload, rows = self.inner.after_round(payload, server_round, seed)
        return payload, [{"client": "server", "split": "privacy", "epsilon": self.accountant.epsilon(server_round)},
                         *rows]

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "noise_secret": self.secret.hex()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "noise_secret" not in state:
            raise ValueError("this checkpoint predates the server's own noise secret (its noise came from the "
                             "config's seed): it cannot be resumed under client-level DP; start a new run")
        self.inner.load_state_dict(state["inner"])
        self.secret = PartySecret.from_hex(state["noise_secret"], "the server")
