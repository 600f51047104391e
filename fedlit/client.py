"""A client: its id, its data, one plain ``lightning.Trainer`` fit per round with named client mods, and the app
that answers the server's messages wherever the client runs."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from fedlit.backends.messages import FitIns, FitRes
from fedlit.callbacks import (
    AdapterExtraction,
    ErrorFeedback,
    ExampleLevelDP,
    MaskedAggregation,
    PersonalState,
    UpdateClipping,
    UpdateCompression,
    WatermarkEmbedding,
)
from fedlit.callbacks.personal_state import restore
from fedlit.compression.payloads import decode_global
from fedlit.compression.residual import ResidualStore
from fedlit.data.datamodule import CausalLMDataModule
from fedlit.devices import build_trainer
from fedlit.lightning_modules.causal_lm import CausalLMModule
from fedlit.payload import Payload, changes_to_bytes, from_bytes
from fedlit.privacy.party_secret import PartySecret
from fedlit.round_store import RoundStore, client_state_dir
from fedlit.secure.config import SecureAggregationConfig
from fedlit.secure.messages import encode
from fedlit.secure.party import SecAggParty
from fedlit.secure.protocol import SecAggClient
from fedlit.validation import QUIET_TRAINER, validate
from fedlit.watermark import WatermarkConfig, load_or_make_key

log = logging.getLogger(__name__)

ModuleFactory = Callable[[], CausalLMModule]

# Client Trainers are quiet, keep no checkpoints of their own, and do not validate while fitting:
# the loop checkpoints rounds and evaluates every client on the global adapter itself.
CLIENT_TRAINER_DEFAULTS: dict[str, Any] = {**QUIET_TRAINER, "limit_val_batches": 0}


# The client mods, in the order they act when a fit ends (each reads what the one before it left): the client's own
# state (kept between its fits, never sent), the watermark (acts while training only), DP-SGD accounting, error
# feedback (the last rounding error added back), update clipping and noise (client-level DP), compression (quantized
# on the wire), adapter extraction, masking (secure aggregation).
CLIENT_MODS = ("personal", "watermark", "dp_sgd", "error_feedback", "clipping", "compression", "extraction", "masking")


@dataclass
class ClientWatermark:
    """A client's ownership watermark: the shared settings and where this client keeps its own key."""

    config: WatermarkConfig
    key_path: Path

    def embedding(self, client_id: str, module: CausalLMModule, secret: PartySecret,
                  server_round: int) -> WatermarkEmbedding:
        """The fit's embedding mod, with the client's key (drawn from ``module`` and written on first use); which
        examples it swaps for triggers comes from the client's ``secret``."""
        new = not self.key_path.is_file()
        key = load_or_make_key(self.key_path, client_id, module.model, module.trainable_state_dict(), self.config,
                               module.tokenizer)
        if new:
            log.info("client '%s' drew its watermark key: %s", client_id, self.key_path)
        signature, trigger = self.config.signature, self.config.trigger
        pad = module.tokenizer.pad_token_id if module.tokenizer is not None else 0
        return WatermarkEmbedding(key, signature.weight if signature else 0.0, trigger.rate if trigger else 0.0,
                                  signature is not None and signature.enforce, secret, server_round, pad)


@dataclass
class Client:
    """A client's id and data; ``module_factory``, when set, builds its own LightningModule (a client-specific
    teacher, say) in place of the loop's. A ``personal`` client is evaluated on its own module and keeps whatever
    trainable state of its own that module has between fits (FedMKT's SLMs: their adapters, unless they are
    federated; see :class:`~fedlit.callbacks.PersonalState`)."""

    client_id: str
    datamodule: CausalLMDataModule
    module_factory: ModuleFactory | None = None
    personal: bool = False

    def mods(self, ins: FitIns, global_payload: Payload, masker: SecAggClient | None,
             residuals: ResidualStore | None, watermark: WatermarkEmbedding | None = None,
             personal: RoundStore | None = None, secret: PartySecret | None = None) -> dict[str, Callback | None]:
        """The fit's client mods by name, in :data:`CLIENT_MODS` order (``None``: not used this fit); ``residuals``
        is the client's error-feedback store when ``ins.compression`` asks for error feedback, else ``None``;
        ``watermark`` embeds the client's own key; ``personal`` keeps the client's own state; ``secret`` (needed
        for DP-SGD and noise shares) is the client's own, which their noise is drawn from."""
        clipping, compression, server_round = ins.clip_norm is not None, ins.compression, ins.server_round
        return {
            "personal": PersonalState(personal, server_round) if personal is not None else None,
            "watermark": watermark,
            "dp_sgd": (ExampleLevelDP(ins.example_dp, self.datamodule.batch_size, secret, server_round)
                       if ins.example_dp else None),
            "error_feedback": (ErrorFeedback(self.client_id, global_payload, residuals, server_round)
                               if residuals is not None else None),
            "clipping": (UpdateClipping(self.client_id, global_payload, ins.clip_norm, ins.noise_std,
                                        secret.numpy("dp-noise-share", server_round) if ins.noise_std > 0 else None)
                         if clipping else None),
            "compression": (UpdateCompression(self.client_id, global_payload, compression, ins.seed, residuals,
                                              ins.server_round, masker.config.clip if masker is not None else None)
                            if compression is not None else None),
            "extraction": AdapterExtraction(self.client_id, global_payload),
            "masking": MaskedAggregation(masker, global_payload, unweighted=clipping) if masker is not None else None,
        }

    def fit(self, ins: FitIns, module_factory: ModuleFactory, trainer_kwargs: dict[str, Any],
            masker: SecAggClient | None = None, residuals: ResidualStore | None = None,
            watermark: ClientWatermark | None = None, personal: RoundStore | None = None,
            secret: PartySecret | None = None) -> FitRes:
        """Train from the global adapter in ``ins`` with one plain ``Trainer.fit``; return the update as bytes.

        With a ``masker`` (secure aggregation) the bytes are the encoded masked input and neither the tensors nor
        the example count leave unmasked. With ``ins.clip_norm`` (client-level DP) the update is clipped to that
        L2 norm, plus the client's own noise of std ``ins.noise_std``, and a masked update is unweighted. With
        ``ins.example_dp`` the local training is DP-SGD on random-subset batches; the metrics then count its
        ``dp_sgd_steps``. With ``ins.compression`` the update travels quantized (and the global adapter came
        quantized too when ``downlink``); the client's rounding error waits in ``residuals`` for its next fit. With
        a ``watermark`` the client embeds its own key while it trains (nothing about it is in the reply). With a
        ``personal`` store the fit starts from the client's own state and leaves its new state there. Noise shares,
        DP-SGD's noise and batches and the watermark's trigger swaps are drawn from the client's own ``secret``,
        never from ``ins.seed``, which the server chose.
        """
        L.seed_everything(ins.seed, workers=True, verbose=False)
        module = (self.module_factory or module_factory)()
        embedding = (watermark.embedding(self.client_id, module, secret, ins.server_round)
                     if watermark is not None else None)
        mods = self.mods(ins, received_global(ins, module), masker, residuals, embedding, personal, secret)
        self.datamodule.random_subsets = (secret.torch("dp-sgd-batches", ins.server_round)
                                          if mods["dp_sgd"] is not None else None)
        kwargs = {**CLIENT_TRAINER_DEFAULTS, **trainer_kwargs}
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), *filter(None, mods.values())]
        try:
            build_trainer(**kwargs).fit(module, datamodule=self.datamodule)
        finally:  # the data outlives the fit: its Trainer (this fit's module, optimizer state, gradients) must not
            self.datamodule.trainer = None
        update = mods["extraction"].update
        assert update is not None, "AdapterExtraction did not run: fit ended early"
        if mods["dp_sgd"] is not None:
            update.metrics["dp_sgd_steps"] = mods["dp_sgd"].steps
            update.metrics["dp_sgd_epsilon"] = mods["dp_sgd"].epsilon(len(self.datamodule.train_dataset),
                                                                      ins.example_dp_steps)
        if mods["masking"] is not None:
            return FitRes(encode(mods["masking"].masked), 0, update.metrics)
        if mods["compression"] is not None:
            return FitRes(mods["compression"].wire, update.num_examples, update.metrics)
        return FitRes(changes_to_bytes(update.payload, mods["extraction"].global_payload), update.num_examples,
                      update.metrics)


def received_global(ins: FitIns, module: CausalLMModule) -> Payload:
    """The global adapter in ``ins``: safetensors bytes, or quantized codes laid out as ``module``'s tensors."""
    if ins.compression is not None and ins.compression.downlink:
        return decode_global(ins.global_wire, module.trainable_state_dict(), ins.compression)
    return from_bytes(ins.global_wire)


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
        return PartySecret.load_or_create(client_state_dir(self.state_dir, run_id, self.client_id) / "secret", holder,
                                          self.insecure_seed)

    def residuals(self, run_id: str) -> ResidualStore:
        """This client's error-feedback residuals for run ``run_id``, under its state directory."""
        if self.state_dir is None:
            raise ValueError(f"client '{self.client_id}' has no state directory for its error-feedback residual")
        return ResidualStore(client_state_dir(self.state_dir, run_id, self.client_id))

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

    def fit(self, ins: FitIns) -> FitRes:
        began = time.perf_counter()
        feedback = ins.compression is not None and ins.compression.error_feedback
        watermark = (ClientWatermark(self.watermark, self.watermark_key_path())
                     if self.watermark is not None else None)
        protective = ins.noise_std > 0 or ins.example_dp is not None or watermark is not None
        result = self.client.fit(ins, self.module_factory, self.trainer_kwargs,
                                 masker=self._state() if ins.masked else None,
                                 residuals=self.residuals(ins.run_id) if feedback else None, watermark=watermark,
                                 personal=self.personal_store(), secret=self.secret(ins.run_id) if protective else None)
        result.seconds = round(time.perf_counter() - began, 3)
        return result

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
