"""The federation boundary of a client's ``Trainer.fit``: global adapter in at start, trainable tensors out at end."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback

from fedlit.lightning_modules.causal_lm import CausalLMModule
from fedlit.payload import Payload, Update


class AdapterExtraction(Callback):
    """Loads ``global_payload`` into the client's module when fit starts and builds its :class:`Update` when fit ends.

    Args:
        client_id: named in errors (an adapter that does not match the global one) and in the update.
        global_payload: the server's current adapter tensors.
    """

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
