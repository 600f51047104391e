"""Client side of client-level DP: when fit ends, the client's update is clipped (and, under secure aggregation,
given its share of the noise) before anything reads the trained adapter."""

from __future__ import annotations

import lightning as L
import numpy as np

from fedlit.client.fit_context import ClientMod, FitContext
from fedlit.lightning_modules.causal_lm import CausalLMModule
from fedlit.payload import Payload, flatten, unflatten
from fedlit.privacy.client_dp import clip_to_norm


class UpdateClipping(ClientMod):
    """Sets the trained adapter to ``global + clip(trained - global, clip_norm) + N(0, noise_std^2)``.

    Must run before adapter extraction and masking, which read the adapter when fit ends.

    Args:
        client_id: named in errors.
        global_payload: the adapter the client started from.
        clip_norm: L2 bound of the update over all its tensors.
        noise_std: std of the client's own Gaussian noise (0 when the server adds the noise).
        noise: draws that noise: a generator from the client's own secret, never from a seed the server knows
            (the server could otherwise regenerate every share and remove it from the unmasked sum).
    """

    def __init__(self, client_id: str, global_payload: Payload, clip_norm: float, noise_std: float = 0.0,
                 noise: np.random.Generator | None = None) -> None:
        if noise_std > 0 and noise is None:
            raise ValueError(f"client '{client_id}': a noise share needs the client's own generator")
        self.client_id, self.global_payload = client_id, global_payload
        self.clip_norm, self.noise_std, self.noise = clip_norm, noise_std, noise

    def on_fit_end(self, trainer: L.Trainer, pl_module: CausalLMModule) -> None:
        start = flatten(self.global_payload)
        update = clip_to_norm(flatten(pl_module.trainable_state_dict()) - start, self.clip_norm)
        if self.noise_std > 0:
            update = update + self.noise.normal(0.0, self.noise_std, size=len(update))
        pl_module.load_trainable_state_dict(unflatten(start + update, self.global_payload),
                                            who=f"client '{self.client_id}' (clipped update)")


def update_clipping(fit: FitContext) -> UpdateClipping | None:
    """Settings ``clipping: {clip_norm, noise_std}`` (client-level DP's strategy wrapper sets them); a noise share
    is drawn from the client's own secret."""
    settings = fit.settings("clipping")
    if settings is None:
        return None
    noise_std = settings.get("noise_std", 0.0)
    noise = fit.secret.numpy("dp-noise-share", fit.server_round) if noise_std > 0 else None
    return UpdateClipping(fit.client_id, fit.global_payload, settings["clip_norm"], noise_std, noise)
