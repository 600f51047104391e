"""A client's own trainable state between its fits (FedMKT's SLM adapters): read at the start of a fit, written at
its end, where the client runs; it never travels."""

from __future__ import annotations

import lightning as L

from fedlit.backends.messages import FitRes
from fedlit.client.fit_context import ClientMod, FitContext
from fedlit.client.round_store import RoundStore
from fedlit.payload import Payload, canonical


def restore(module: L.LightningModule, store: RoundStore, before: int | None = None) -> None:
    """Give ``module`` its newest own state from ``store`` (earlier than round ``before`` when given), or tell it it
    has none (it then takes its initial state)."""
    found = store.load(before=before)
    module.load_personal_state_dict(canonical(found) if found is not None else None)


class PersonalState(ClientMod):
    """Loads the module's newest own state from before ``server_round`` (its initial state when there is none) and
    stores the state it ends the fit with as round ``server_round``'s. The module provides
    ``personal_state_dict()`` and ``load_personal_state_dict(state or None)``."""

    END_STATE = ("state",)

    def __init__(self, store: RoundStore, server_round: int) -> None:
        self.store, self.server_round = store, server_round
        self.state: Payload | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        restore(pl_module, self.store, before=self.server_round)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.state = pl_module.personal_state_dict()

    def shape_reply(self, reply: FitRes) -> None:
        if self.state is not None:
            self.store.save(self.server_round, self.state)


def personal_state(fit: FitContext) -> PersonalState | None:
    """For a ``personal`` client (its own setting, not the server's): its store under its state directory."""
    store = fit.app.personal_store()
    return PersonalState(store, fit.server_round) if store is not None else None
