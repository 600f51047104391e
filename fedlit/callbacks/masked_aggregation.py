"""Client side of secure aggregation: at fit end, the client's update leaves only masked."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback

from fedlit.lightning_modules.causal_lm import CausalLMModule
from fedlit.payload import Payload, check_compatible, flatten
from fedlit.secure.messages import MaskedInput
from fedlit.secure.protocol import SecAggClient


class MaskedAggregation(Callback):
    """Masks ``num_examples * (trained adapter - global adapter)`` and ``num_examples`` when fit ends.

    Runs after :class:`~fedlit.callbacks.AdapterExtraction`; what the client sends is :attr:`masked`.

    Args:
        masker: this client's protocol state for the round (keys exchanged, shares received).
        global_payload: the adapter the client started from.
    """

    def __init__(self, masker: SecAggClient, global_payload: Payload) -> None:
        self.masker = masker
        self.global_payload = global_payload
        self.masked: MaskedInput | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: CausalLMModule) -> None:
        trained = pl_module.trainable_state_dict()
        check_compatible(self.global_payload, trained, f"client '{self.masker.client_id}'")
        update = flatten({name: trained[name] for name in self.global_payload}) - flatten(self.global_payload)
        self.masked = self.masker.mask(update, len(trainer.train_dataloader.dataset))
