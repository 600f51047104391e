"""Client side of secure aggregation: at fit end, the client's update leaves only masked."""

from __future__ import annotations

import lightning as L
import numpy as np

from fedlit.backends.messages import FitRes
from fedlit.client.fit_context import ClientMod, FitContext
from fedlit.faults import UnusableUpdate
from fedlit.lightning_modules.causal_lm import CausalLMModule
from fedlit.payload import Payload, check_compatible, flatten
from fedlit.secure.messages import MaskedInput, encode
from fedlit.secure.protocol import SecAggClient


class MaskedAggregation(ClientMod):
    """Masks ``weight * (trained adapter - global adapter)`` and ``weight`` when fit ends; the weight is the
    client's example count, or 1 when ``unweighted`` (client-level DP, whose sum must not depend on it).

    Runs after :class:`~fedlit.client.mods.adapter_extraction.AdapterExtraction`; the reply carries only
    :attr:`masked` (its example count 0: the weight travels inside the mask). A non-finite update raises: the client
    drops out rather than poison a sum nobody can inspect.

    Args:
        masker: this client's protocol state for the round (keys exchanged, shares received).
        global_payload: the adapter the client started from.
        unweighted: weight 1 instead of the example count.
    """

    END_STATE = ("masked",)

    def __init__(self, masker: SecAggClient, global_payload: Payload, unweighted: bool = False) -> None:
        self.masker = masker
        self.global_payload = global_payload
        self.unweighted = unweighted
        self.masked: MaskedInput | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: CausalLMModule) -> None:
        trained = pl_module.trainable_state_dict()
        check_compatible(self.global_payload, trained, f"client '{self.masker.client_id}'")
        update = flatten({name: trained[name] for name in self.global_payload}) - flatten(self.global_payload)
        if not np.isfinite(update).all():
            raise UnusableUpdate(f"client '{self.masker.client_id}': its update has NaN/Inf values; not submitted")
        weight = 1 if self.unweighted else len(trainer.train_dataloader.dataset)
        self.masked = self.masker.mask(update, weight)

    def shape_reply(self, reply: FitRes) -> None:
        reply.wire, reply.num_examples = encode(self.masked), 0


def masked_aggregation(fit: FitContext) -> MaskedAggregation | None:
    """Settings ``masking: {}`` (the secure-aggregation workflow sets them for the clients that joined the round's
    key exchange); unweighted when the fit is also clipped (client-level DP)."""
    if fit.settings("masking") is None:
        return None
    return MaskedAggregation(fit.app.masker(), fit.global_payload, unweighted=fit.settings("clipping") is not None)
