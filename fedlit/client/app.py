"""A client's app: it answers the server's messages wherever the client runs (a fit, an evaluation, the
secure-aggregation stages) and keeps the client's own state: its secret, residuals, personal state, keys."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedlit.backends.messages import FitIns, FitRes
from fedlit.client.member import Client, ModuleFactory
from fedlit.client.mods.personal_state import restore
from fedlit.client.round_store import RoundStore, client_state_dir
from fedlit.compression.residual import ResidualStore
from fedlit.payload import from_bytes
from fedlit.privacy.party_secret import PartySecret
from fedlit.secure.client_endpoint import SecAggParty
from fedlit.secure.config import SecureAggregationConfig
from fedlit.validation import validate
from fedlit.watermark import WatermarkConfig


class ClientApp(SecAggParty):
    """A client's side of the federation, wherever it runs: it answers the server's messages, a fit and the
    secure-aggregation stages, and keeps its protocol state (keys, seeds, shares) to itself."""

    def __init__(self, client: Client, module_factory: ModuleFactory, trainer_kwargs: dict[str, Any],
                 secure_config: SecureAggregationConfig | None = None, state_dir: Path | None = None,
                 watermark: WatermarkConfig | None = None, insecure_seed: int | None = None) -> None:
        super().__init__(client.client_id, secure_config)
        self.client, self.module_factory, self.trainer_kwargs = client, module_factory, trainer_kwargs
        self.state_dir, self.insecure_seed = state_dir, insecure_seed
        self.watermark = watermark if watermark is not None and watermark.embeds(client.client_id) else None
        self._secret: PartySecret | None = None  # without a state directory: this app's own, for its lifetime

    def secret(self, run_id: str) -> PartySecret:
        """This client's secret for run ``run_id``: ``secret`` under its state directory (drawn from OS entropy on
        first use, read back on resume), so a re-run round draws the same noise and no other party can."""
        holder = f"client '{self.client_id}'"
        if self.state_dir is None:
            self._secret = self._secret or PartySecret.fresh(holder, self.insecure_seed)
            return self._secret
        return PartySecret.load_or_create(self.state_directory(run_id) / "secret", holder, self.insecure_seed)

    def residuals(self, run_id: str) -> ResidualStore:
        """This client's error-feedback residuals for run ``run_id``, under its state directory."""
        return ResidualStore(self.state_directory(run_id))

    def personal_store(self) -> RoundStore | None:
        """Where a personal client keeps its own state: ``<state dir>/personal/<client>`` (not per run: a fresh run
        refuses an output directory that holds ``client_state``)."""
        if not self.client.personal:
            return None
        if self.state_dir is None:
            raise ValueError(f"client '{self.client_id}' has no state directory for its own state")
        return RoundStore(client_state_dir(self.state_dir, "personal", self.client_id), "state")

    def watermark_key_path(self) -> Path:
        """``watermark.key_dir/<client id>.json``; a relative ``key_dir`` is under the client's state directory."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.client_id):
            raise ValueError(f"client id '{self.client_id}' cannot name its watermark key file: use letters, digits, "
                             "'.', '_' or '-'")
        directory = Path(self.watermark.key_dir)
        if not directory.is_absolute():
            if self.state_dir is None:
                raise ValueError(f"client '{self.client_id}' has no state directory for its watermark key: give "
                                 "watermark.key_dir as an absolute path")
            directory = self.state_dir / directory
        return directory / f"{self.client_id}.json"

    def state_directory(self, run_id: str) -> Path:
        """Where this client keeps its state for run ``run_id`` (under its state directory)."""
        if self.state_dir is None:
            raise ValueError(f"client '{self.client_id}' has no state directory for its own state")
        return client_state_dir(self.state_dir, run_id, self.client_id)

    def fit(self, ins: FitIns) -> FitRes:
        """The client's fit (:meth:`~fedlit.client.member.Client.fit`), timed."""
        began = time.perf_counter()
        reply = self.client.fit(ins, self)
        reply.seconds = round(time.perf_counter() - began, 3)
        return reply

    def describe(self) -> dict[str, int | str]:
        """What a deployment's server learns of this client before the run: its id and the sizes of its splits."""
        data = self.client.datamodule
        return {"client_id": self.client_id, "train_size": len(data.train_dataset), "val_size": len(data.val_dataset)}

    def evaluate(self, global_wire: bytes) -> dict[str, float]:
        """The global adapter's metrics on this client's held-out split (and its size, ``num_examples``): the
        evaluating module is the loop's, whatever module this client trains, except for a personal client: its
        own module with its newest own state."""
        store = self.personal_store()
        module = (self.client.module_factory or self.module_factory)() if store is not None else self.module_factory()
        module.load_trainable_state_dict(from_bytes(global_wire), who="the global adapter")
        if store is not None:
            restore(module, store)
        datamodule = self.client.datamodule
        (metrics,) = validate(module, {self.client.client_id: datamodule}, self.trainer_kwargs).values()
        return {**metrics, "num_examples": len(datamodule.val_dataset)}


@dataclass
class ClientApps:
    """Builds any client's :class:`ClientApp`. Plain data and a module factory: a backend can ship it to its
    workers once, and each worker then holds one frozen base model for every client it runs."""

    clients: dict[str, Client]
    module_factory: ModuleFactory
    trainer_kwargs: dict[str, Any]
    secure_config: SecureAggregationConfig | None = None
    state_dir: Path | None = None
    watermark: WatermarkConfig | None = None
    insecure_seed: int | None = None

    def __call__(self, client_id: str) -> ClientApp:
        return ClientApp(self.clients[client_id], self.module_factory, self.trainer_kwargs, self.secure_config,
                         self.state_dir, self.watermark, self.insecure_seed)
