"""A federation member: its id, its data, the module it trains, and its fit: one plain ``lightning.Trainer`` with the
client mods chained in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L

from fedlit.backends.messages import FitIns, FitRes
from fedlit.client.fit_context import ClientState, FitContext
from fedlit.client.mods import build_mods
from fedlit.compression.config import CompressionConfig
from fedlit.compression.payloads import decode_global
from fedlit.data.datamodule import CausalLMDataModule
from fedlit.devices import build_trainer
from fedlit.lightning_modules.causal_lm import CausalLMModule
from fedlit.payload import Payload, from_bytes
from fedlit.validation import QUIET_TRAINER

ModuleFactory = Callable[[], CausalLMModule]

# Client Trainers are quiet, keep no checkpoints of their own, and do not validate while fitting:
# the loop checkpoints rounds and evaluates every client on the global adapter itself.
CLIENT_TRAINER_DEFAULTS: dict[str, Any] = {**QUIET_TRAINER, "limit_val_batches": 0}


def received_global(ins: FitIns, module: CausalLMModule) -> Payload:
    """The global adapter in ``ins``: safetensors bytes, or quantized codes laid out as ``module``'s tensors (when
    the fit's compression settings ask for a compressed ``downlink``)."""
    compression = ins.mods.get("compression")
    if compression is not None and compression.get("downlink"):
        return decode_global(ins.global_wire, module.trainable_state_dict(), CompressionConfig(**compression))
    return from_bytes(ins.global_wire)


@dataclass
class Client:
    """A client's id and data; ``module_factory``, when set, builds its own LightningModule (a client-specific
    teacher, say) in place of the loop's. A ``personal`` client is evaluated on its own module and keeps whatever
    trainable state of its own that module has between fits (FedMKT's SLMs: their adapters, unless they are
    federated; see :class:`~fedlit.client.mods.PersonalState`)."""

    client_id: str
    datamodule: CausalLMDataModule
    module_factory: ModuleFactory | None = None
    personal: bool = False

    def fit(self, ins: FitIns, app: ClientState) -> FitRes:
        """Train from the global adapter in ``ins`` with one plain ``Trainer.fit``, the client mods chained in by
        :func:`~fedlit.client.mods.build_mods` (each reads its settings from ``ins.mods`` or the client's own state
        in ``app``); the reply is what the mods shape it into, in chain order."""
        L.seed_everything(ins.seed, workers=True, verbose=False)
        module = (self.module_factory or app.module_factory)()
        mods = build_mods(FitContext(ins, module, received_global(ins, module), self.datamodule, app, {}))
        kwargs = {**CLIENT_TRAINER_DEFAULTS, **app.trainer_kwargs}
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), *mods.values()]
        try:
            build_trainer(**kwargs).fit(module, datamodule=self.datamodule)
        finally:  # the data outlives the fit: its Trainer (this fit's module, optimizer state, gradients) must not
            self.datamodule.trainer = None
        reply = FitRes(b"", 0, {})
        for mod in mods.values():
            mod.shape_reply(reply)
        return reply
