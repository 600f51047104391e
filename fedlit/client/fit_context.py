"""What a client mod is built from for one fit, and what every client mod is: a Lightning callback that may also
shape the client's reply."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from lightning.pytorch.callbacks import Callback

from fedlit.backends.messages import FitIns, FitRes
from fedlit.client.round_store import RoundStore
from fedlit.compression.residual import ResidualStore
from fedlit.data.datamodule import CausalLMDataModule
from fedlit.lightning_modules.causal_lm import CausalLMModule
from fedlit.payload import Payload
from fedlit.privacy.party_secret import PartySecret
from fedlit.secure.config import SecureAggregationConfig
from fedlit.secure.protocol import SecAggClient
from fedlit.watermark import WatermarkConfig


class ClientState(Protocol):
    """What a client keeps for itself where it runs, as its mods reach it (:class:`~fedlit.client.app.ClientApp`)."""

    client_id: str
    module_factory: Callable[[], CausalLMModule]
    trainer_kwargs: dict[str, Any]
    secure_config: SecureAggregationConfig | None
    watermark: WatermarkConfig | None

    def secret(self, run_id: str) -> PartySecret: ...

    def state_directory(self, run_id: str) -> Path: ...

    def residuals(self, run_id: str) -> ResidualStore: ...

    def personal_store(self) -> RoundStore | None: ...

    def masker(self) -> SecAggClient: ...

    def watermark_key_path(self) -> Path: ...


class ClientMod(Callback):
    """A client mod: an ordinary Lightning callback on the client's ``Trainer.fit`` that, after the fit, may change
    the reply (:meth:`shape_reply`): its bytes, its example count, its metrics.

    ``END_STATE`` names the attributes the fit's end sets and :meth:`shape_reply` reads: a fit that spans devices
    ends in its ranks' processes, and these come back from rank 0 (:mod:`fedlit.multi_device`). So that a client's
    own files are written once, by the process that answers, a mod writes them in :meth:`shape_reply`."""

    END_STATE: ClassVar[tuple[str, ...]] = ()

    def shape_reply(self, reply: FitRes) -> None:
        """Change ``reply`` after the fit (nothing by default); mods shape it in chain order."""


@dataclass
class FitContext:
    """One fit of one client, as its mods see it: the server's instructions (``ins``, whose ``mods`` mapping holds
    each mod's settings under its name), the module about to train, the global adapter it starts from, the
    client's data, its app (its own state: secret, residuals, secure-aggregation state, keys) and the mods built
    before this one (by name). A mod built first may widen ``global_payload`` to the module's shapes (the LoRA
    rank's share, zero-padded) before the others see it."""

    ins: FitIns
    module: CausalLMModule
    global_payload: Payload
    datamodule: CausalLMDataModule
    app: ClientState
    built: dict[str, ClientMod]

    @property
    def client_id(self) -> str:
        return self.app.client_id

    @property
    def server_round(self) -> int:
        return self.ins.server_round

    def settings(self, mod: str) -> dict[str, Any] | None:
        """The settings the server side sent for ``mod`` this fit (``None``: not asked for)."""
        return self.ins.mods.get(mod)

    @functools.cached_property
    def secret(self) -> PartySecret:
        """The client's own secret for this run (drawn from OS entropy on first use): every protection's
        randomness comes from it, never from ``ins.seed``, which the server chose."""
        return self.app.secret(self.ins.run_id)
