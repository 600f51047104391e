"""FedCoLLM (FATE-LLM's federated co-tuning): clients federate a small LM's (SLM) adapter; after each aggregation
the server runs mutual distillation between that SLM and its own large LM (LLM) on public data, so the LLM
gains the clients' domain knowledge and the SLM the LLM's. The clients' SLM starts as a model distilled from
the server's LLM."""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
from datasets import Dataset
from peft import LoraConfig, PeftConfig
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedlit.algorithms.fed_homo_llm import DEFAULT_LORA
from fedlit.algorithms.federated_loop import federated_loop
from fedlit.algorithms.server_llm import ServerLLM
from fedlit.data.datamodule import CausalLMDataModule
from fedlit.data.federated import GLOBAL, DataConfig
from fedlit.data.public import public_blocks, public_dataloader
from fedlit.federation import Federation
from fedlit.lightning_modules import (
    CausalLMModule,
    DistillationConfig,
    DistillationLossConfig,
    EvaluationConfig,
    MutualDistillation,
    OptimizerConfig,
    PeftModule,
    build_peft_model,
)
from fedlit.lightning_modules.knowledge_distillation import check_same_tokenizer, check_shared_vocabulary
from fedlit.models import ModelConfig, load_base_model, load_tokenizer
from fedlit.payload import Payload
from fedlit.server.emulator_construction import write_client_package
from fedlit.server.loop import FederatedLoop
from fedlit.strategies import Strategy
from fedlit.validation import server_trainer


def distil(llm: CausalLMModule, slm: CausalLMModule, config: DistillationConfig, loss: DistillationLossConfig,
           tokenizer: PreTrainedTokenizerBase, trainer_kwargs: dict[str, Any], seed: int,
           blocks: Dataset | None = None) -> dict[str, float]:
    """``config.steps`` of :class:`MutualDistillation` on the public data (``blocks`` if already built);
    returns the mean loss over the steps of each side that trains."""
    blocks = public_blocks(config, tokenizer) if blocks is None else blocks
    L.seed_everything(seed, verbose=False)
    trainer = server_trainer(trainer_kwargs, max_steps=config.steps)
    trainer.fit(MutualDistillation(llm, slm, loss, config.lr),
                public_dataloader(blocks, config, tokenizer.pad_token_id, seed))
    return {side: float(trainer.callback_metrics[f"{side}_loss_epoch"]) for side in ("llm", "slm")
            if f"{side}_loss_epoch" in trainer.callback_metrics}


class CoTuningServer(ServerLLM):
    """The server's half of FedCoLLM, as a strategy wrapper: it holds the LLM and its adapter; after each
    aggregation the aggregated SLM adapter and the LLM adapter distil into each other for ``config.steps`` on the
    public data (``steps: 0`` leaves plain FedAvg), and the SLM adapter that comes out is what clients get next
    round. Its rows use ``model: llm`` / ``model: slm``.
    """

    def __init__(self, inner: Strategy, llm: Callable[[], PeftModule], slm_factory: Callable[[], PeftModule],
                 config: DistillationConfig, loss: DistillationLossConfig, tokenizer: PreTrainedTokenizerBase,
                 held_out: Mapping[str, CausalLMDataModule], trainer_kwargs: dict[str, Any]) -> None:
        super().__init__(inner, llm, held_out, trainer_kwargs)
        self.slm_factory, self.config, self.loss, self.tokenizer = slm_factory, config, loss, tokenizer

    @functools.cached_property
    def blocks(self) -> Dataset | None:
        return public_blocks(self.config, self.tokenizer) if self.config.steps > 0 else None

    def after_round(self, payload: Payload, server_round: int, seed: int) -> tuple[Payload, list[dict[str, Any]]]:
        payload, rows = self.inner.after_round(payload, server_round, seed)
        if self.config.steps <= 0:
            return payload, rows
        slm = self.slm_factory()
        slm.load_trainable_state_dict(payload, who="the aggregated SLM adapter")
        losses = distil(self.llm, slm, self.config, self.loss, self.tokenizer, self.trainer_kwargs, seed, self.blocks)
        rows += [{"client": "server", "split": "train", "model": side, "loss": loss} for side, loss in losses.items()]
        return slm.trainable_state_dict(), rows


def client_slm(llm: PreTrainedModel, slm: PreTrainedModel, init: DistillationConfig, loss: DistillationLossConfig,
               tokenizer: PreTrainedTokenizerBase, trainer_kwargs: dict[str, Any], directory: Path, seed: int) -> None:
    """Write the SLM clients start from to ``directory``: ``slm`` with all its weights distilled from the frozen
    ``llm`` for ``init.steps`` (0: as loaded)."""
    if init.steps > 0:
        distil(CausalLMModule(llm), CausalLMModule(slm.requires_grad_(True)), init, loss, tokenizer, trainer_kwargs,
               seed)
    write_client_package(slm.requires_grad_(False).eval(), tokenizer, directory)


def fed_co_llm(
    llm: ModelConfig = ModelConfig(),  # noqa: B008 - frozen-by-convention config defaults
    slm: ModelConfig = ModelConfig(keep_blocks=8),  # noqa: B008
    slm_init: DistillationConfig = DistillationConfig(),  # noqa: B008
    server: DistillationConfig = DistillationConfig(steps=8),  # noqa: B008
    loss: DistillationLossConfig = DistillationLossConfig(),  # noqa: B008
    data: DataConfig = DataConfig(),  # noqa: B008
    peft: PeftConfig | None = None,
    llm_peft: PeftConfig | None = None,
    optimizer: OptimizerConfig = OptimizerConfig(),  # noqa: B008
    evaluation: EvaluationConfig = EvaluationConfig(),  # noqa: B008
    federation: Federation | None = None,
) -> FederatedLoop:
    """Compose a FedCoLLM run.

    Args:
        llm: the server's large model (default: the offline SmolLM2-135M-Instruct); its ``quantization`` is the
            server's choice (QLoRA for its adapter).
        slm: the clients' small model, sharing the LLM's vocabulary (default: the LLM cut to 8 blocks); its
            ``quantization`` applies where clients load the distilled SLM (``slm_init`` distils it in full).
        slm_init: distillation of all the SLM's weights from the LLM on public data before round 1
            (``steps: 0`` ships the SLM as loaded); the result is written to ``output_dir/client_slm``.
        server: the per-round mutual distillation of the two adapters on public data (``steps: 0``: FedAvg
            only, the LLM stays as it is).
        loss: the CE/KL mix and temperature of every distillation.
        peft: the SLM's adapter, the one clients federate (default: LoRA r=8 on q_proj and v_proj).
        llm_peft: the LLM's adapter (default: as ``peft``).

    ``data``, ``optimizer``, ``evaluation`` and ``federation`` are as for :func:`fedlit.algorithms.fed_homo_llm`;
    evaluation scores the global SLM adapter on every party and the LLM on the server's held-out split (rows
    ``model: llm``); ``federation.output_dir`` also gets ``client_slm/`` and the final ``llm_adapter/``.
    """
    federation = federation or Federation()
    seed, trainer_kwargs = federation.seed, federation.trainer
    llm_base = functools.cache(functools.partial(load_base_model, llm))  # the server's: never a party's

    def build(directory: Path) -> None:
        # the SLM's own weights are distilled in full: quantization applies to the copies clients load
        tokenizer, slm_base = load_tokenizer(slm), load_base_model(dataclasses.replace(slm, quantization=None))
        try:
            check_same_tokenizer(tokenizer, load_tokenizer(llm), names=("SLM", "LLM"))
            check_shared_vocabulary(slm_base, llm_base(), names=("SLM", "LLM"))
        except ValueError as error:
            raise ValueError(f"FedCoLLM: slm '{slm.name_or_path}', llm '{llm.name_or_path}': {error}") from None
        client_slm(llm_base(), slm_base, slm_init, loss, tokenizer, trainer_kwargs, directory, seed)

    package = federation.backend.client_package(Path(federation.output_dir) / "client_slm", build)
    tokenizer = load_tokenizer(ModelConfig(str(package)))  # the package holds everything a client gets
    federated = federation.backend.federated_data(data, tokenizer)
    slm_base = load_base_model(dataclasses.replace(slm, name_or_path=str(package), keep_blocks=None))
    peft = peft or LoraConfig(**DEFAULT_LORA)  # peft fills in a config's base model: each model gets its own copy
    slm_model = build_peft_model(slm_base, copy.deepcopy(peft), seed=seed)
    slm_factory = functools.partial(PeftModule, slm_model, optimizer, evaluation, tokenizer)
    if federated.held_by_parties:  # a deployment: the server holds no held-out data to score its LLM on
        held_out = {}
    else:
        held_out = {GLOBAL: federated.global_val} if federated.global_val is not None else dict(federated.clients)

    def llm_module() -> PeftModule:
        return PeftModule(build_peft_model(llm_base(), copy.deepcopy(llm_peft or peft), seed=seed), optimizer,
                          evaluation, tokenizer)

    co_tuning = CoTuningServer(federation.strategy, llm_module, slm_factory, server, loss, tokenizer, held_out,
                               trainer_kwargs)
    return federated_loop(
        federated, slm_factory, federation.replace(strategy=co_tuning),
        fingerprint={"llm": llm, "slm": slm, "slm_init": slm_init, "data": data, "peft": peft, "llm_peft": llm_peft},
    )
