"""A simulated client: its id, its data, and one plain ``lightning.Trainer`` fit per round."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np

from fedlit.callbacks import AdapterExtraction, ExampleLevelDP, MaskedAggregation, UpdateClipping
from fedlit.data.datamodule import CausalLMDataModule
from fedlit.lightning_modules.causal_lm import CausalLMModule
from fedlit.payload import Payload, Update, from_bytes, to_bytes
from fedlit.privacy.example_dp import ExampleDPConfig
from fedlit.secure.messages import encode
from fedlit.secure.protocol import SecAggClient

ModuleFactory = Callable[[], CausalLMModule]

# Client Trainers are quiet, keep no checkpoints of their own, and do not validate while fitting:
# the loop checkpoints rounds and evaluates every client on the global adapter itself.
CLIENT_TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "limit_val_batches": 0,
}


def client_seed(seed: int, server_round: int, client_id: str) -> int:
    """A seed that depends only on (seed, round, client), so any round can be replayed or resumed exactly."""
    return int(np.random.SeedSequence([seed, server_round, zlib.crc32(client_id.encode())]).generate_state(1)[0])


@dataclass
class Client:
    """A client's id and data; ``module_factory``, when set, builds its own LightningModule (a client-specific
    teacher, say) in place of the loop's."""

    client_id: str
    datamodule: CausalLMDataModule
    module_factory: ModuleFactory | None = None

    def fit(
        self,
        global_wire: bytes,
        module_factory: ModuleFactory,
        trainer_kwargs: dict[str, Any],
        seed: int,
        masker: SecAggClient | None = None,
        clip_norm: float | None = None,
        noise_std: float = 0.0,
        example_dp: ExampleDPConfig | None = None,
    ) -> tuple[bytes, Update]:
        """Train from the global adapter (safetensors bytes in); return the update as bytes and as tensors.

        With a ``masker`` (secure aggregation) the bytes are the encoded masked input and the returned update
        carries only the client's metrics: neither its tensors nor its example count leave it unmasked.
        With ``clip_norm`` (client-level DP) the update is clipped to that L2 norm, plus the client's own
        noise of std ``noise_std``, and a masked update is unweighted. With ``example_dp`` the local training
        is DP-SGD on random-subset batches; the update's metrics then count its ``dp_sgd_steps``.
        """
        L.seed_everything(seed, workers=True, verbose=False)
        global_payload = from_bytes(global_wire)
        extraction = AdapterExtraction(self.client_id, global_payload)
        clipping = (UpdateClipping(self.client_id, global_payload, clip_norm, noise_std, seed)
                    if clip_norm is not None else None)
        masking = (MaskedAggregation(masker, global_payload, unweighted=clipping is not None)
                   if masker is not None else None)
        kwargs = {**CLIENT_TRAINER_DEFAULTS, **trainer_kwargs}
        dp_sgd = ExampleLevelDP(example_dp, self.datamodule.batch_size, seed) if example_dp is not None else None
        self.datamodule.random_subsets = dp_sgd is not None
        kwargs["callbacks"] = [*kwargs.get("callbacks", []),
                               *filter(None, (dp_sgd, clipping, extraction, masking))]
        trainer = L.Trainer(**kwargs)
        trainer.fit((self.module_factory or module_factory)(), datamodule=self.datamodule)
        assert extraction.update is not None, "AdapterExtraction did not run: fit ended early"
        if dp_sgd is not None:
            extraction.update.metrics["dp_sgd_steps"] = dp_sgd.steps
        if masking is not None:
            return encode(masking.masked), dataclasses.replace(extraction.update, payload=Payload(), num_examples=0)
        wire = to_bytes(extraction.update.payload)
        return wire, dataclasses.replace(extraction.update, payload=from_bytes(wire))
