"""The federation boundary of a client's ``Trainer.fit``: global adapter in at start, trainable tensors out at end."""

from __future__ import annotations

import lightning as L

from fedlit.backends.messages import FitRes
from fedlit.client.fit_context import ClientMod, FitContext
from fedlit.lightning_modules.causal_lm import CausalLMModule
from fedlit.payload import Payload, Update, changes_to_bytes


class AdapterExtraction(ClientMod):
    """Loads ``global_payload`` into the client's module when fit starts and builds its :class:`Update` when fit
    ends; the reply's example count and metrics are the update's, and its bytes the changed tensors unless an
    earlier mod encoded the update already (compression).

    Args:
        client_id: named in errors (an adapter that does not match the global one) and in the update.
        global_payload: the server's current adapter tensors.
    """

    END_STATE = ("update",)

    def __init__(self, client_id: str, global_payload: Payload) -> None:
        self.client_id = client_id
        self.global_payload = global_payload
        self.update: Update | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: CausalLMModule) -> None:
        pl_module.load_trainable_state_dict(self.global_payload, who=f"client '{self.client_id}'")

    def on_fit_end(self, trainer: L.Trainer, pl_module: CausalLMModule) -> None:
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}
        self.update = Update(
            client_id=self.client_id,
            payload=pl_module.trainable_state_dict(),
            num_examples=len(trainer.train_dataloader.dataset),
            metrics=metrics,
        )

    def shape_reply(self, reply: FitRes) -> None:
        if self.update is None:
            raise RuntimeError(f"client '{self.client_id}': the fit ended before AdapterExtraction saw its end")
        reply.num_examples = self.update.num_examples
        reply.metrics.update(self.update.metrics)
        if not reply.wire:
            reply.wire = changes_to_bytes(self.update.payload, self.global_payload)


def adapter_extraction(fit: FitContext) -> AdapterExtraction:
    """Every fit has it."""
    return AdapterExtraction(fit.client_id, fit.global_payload)
