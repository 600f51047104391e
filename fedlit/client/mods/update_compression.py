"""Client mods of compressed updates: error feedback adds the client's last rounding error to its update before
anything clips it, compression quantizes what is then sent (after clipping and any noise)."""

from __future__ import annotations

import lightning as L
import numpy as np

from fedlit.backends.messages import FitRes
from fedlit.client.fit_context import ClientMod, FitContext
from fedlit.compression.config import CompressionConfig
from fedlit.compression.quantize import dequantize, quantize, quantize_to_grid, to_wire
from fedlit.compression.residual import ResidualStore
from fedlit.lightning_modules.causal_lm import CausalLMModule
from fedlit.payload import Payload, flatten, unflatten


class ErrorFeedback(ClientMod):
    """Adds the residual of the client's previous fit to its trained adapter when fit ends, so that clipping and
    compression see ``update + residual``. Runs before update clipping.

    Args:
        client_id: named in errors.
        global_payload: the adapter the client started from (its layout).
        store: the client's residuals.
        server_round: this fit's round (it reads the newest residual of an earlier one).
    """

    def __init__(self, client_id: str, global_payload: Payload, store: ResidualStore, server_round: int) -> None:
        self.client_id, self.global_payload, self.store, self.server_round = (client_id, global_payload, store,
                                                                              server_round)

    def on_fit_end(self, trainer: L.Trainer, pl_module: CausalLMModule) -> None:
        trained = flatten(pl_module.trainable_state_dict())
        residual = self.store.load(self.server_round, len(trained))
        pl_module.load_trainable_state_dict(unflatten(trained + residual, self.global_payload),
                                            who=f"client '{self.client_id}' (error feedback)")


class UpdateCompression(ClientMod):
    """Sets the trained adapter to ``global + Q(trained - global)`` when fit ends, so that every later mod (and
    the server) sees exactly what is sent; keeps the bytes in :attr:`wire` and, with a ``store``, the rounding
    error for the client's next fit.

    ``Q`` is blockwise absmax quantization (:func:`fedlit.compression.quantize.quantize`); under secure
    aggregation (``grid_clip`` set) it is the grid every client shares, ``clip / (2^(bits-1) - 1)``, whose
    integer codes the masked ring sums. Runs after update clipping and before adapter extraction; the reply's bytes
    are :attr:`wire` (masked ones instead under secure aggregation).

    Args:
        client_id: named in errors.
        global_payload: the adapter the client started from.
        config: bits, block size, rounding, error feedback.
        seed: seeds the stochastic rounding.
        store: where the residual goes (``None``: no error feedback).
        server_round: this fit's round (names the residual).
        grid_clip: secure aggregation's per-coordinate clip: quantize onto the shared grid instead of blocks.
    """

    END_STATE = ("wire", "residual")

    def __init__(self, client_id: str, global_payload: Payload, config: CompressionConfig, seed: int,
                 store: ResidualStore | None = None, server_round: int = 0, grid_clip: float | None = None) -> None:
        self.client_id, self.global_payload, self.config, self.seed = client_id, global_payload, config, seed
        self.store, self.server_round, self.grid_clip = store, server_round, grid_clip
        self.wire: bytes | None = None
        self.residual: np.ndarray | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: CausalLMModule) -> None:
        start = flatten(self.global_payload)
        update = flatten(pl_module.trainable_state_dict()) - start
        if not np.isfinite(update).all():
            raise ValueError(f"client '{self.client_id}': its update has NaN/Inf values; not sent")
        rng = np.random.default_rng([self.seed, 1]) if self.config.stochastic else None
        if self.grid_clip is None:
            codes = quantize(update, self.config, rng)
            sent, self.wire = dequantize(codes, self.config), to_wire(codes, self.config)
        else:
            sent = quantize_to_grid(update, self.config, self.grid_clip, rng) * (self.grid_clip /
                                                                                self.config.grid_levels)
        self.residual = update - sent
        pl_module.load_trainable_state_dict(unflatten(start + sent, self.global_payload),
                                            who=f"client '{self.client_id}' (compressed update)")

    def shape_reply(self, reply: FitRes) -> None:
        if self.store is not None and self.residual is not None:
            self.store.save(self.server_round, self.residual)
        if self.wire is not None:
            reply.wire = self.wire


def compression_config(fit: FitContext) -> CompressionConfig | None:
    """Settings ``compression: {bits, block_size, ...}`` (the federation's ``compression``)."""
    settings = fit.settings("compression")
    return CompressionConfig(**settings) if settings is not None else None


def error_feedback(fit: FitContext) -> ErrorFeedback | None:
    """Under compression with ``error_feedback``: the client's residuals under its state directory."""
    config = compression_config(fit)
    if config is None or not config.error_feedback:
        return None
    return ErrorFeedback(fit.client_id, fit.global_payload, fit.app.residuals(fit.ins.run_id), fit.server_round)


def update_compression(fit: FitContext) -> UpdateCompression | None:
    """Under compression: quantized onto blocks, or onto secure aggregation's shared grid when the fit is masked."""
    config = compression_config(fit)
    if config is None:
        return None
    feedback = fit.built.get("error_feedback")
    grid_clip = fit.app.secure_config.clip if fit.settings("masking") is not None else None
    return UpdateCompression(fit.client_id, fit.global_payload, config, fit.ins.seed,
                             feedback.store if feedback is not None else None, fit.server_round, grid_clip)
