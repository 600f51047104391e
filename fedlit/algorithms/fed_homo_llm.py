"""FedHomoLLM (FATE-LLM): clients share one base model and federate its PEFT parameters."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from peft import LoraConfig, PeftConfig, PeftModel
from transformers import PreTrainedTokenizerBase

from fedlit.algorithms.federated_loop import federated_loop
from fedlit.client import ModuleFactory
from fedlit.data.federated import DataConfig
from fedlit.federation import Federation
from fedlit.lightning_modules import EvaluationConfig, OptimizerConfig, PeftModule, build_peft_model
from fedlit.models import ModelConfig, load_base_model, load_tokenizer
from fedlit.server.loop import FederatedLoop

DEFAULT_LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}


def fed_homo_llm(
    model: ModelConfig = ModelConfig(),  # noqa: B008 - frozen-by-convention config defaults
    data: DataConfig = DataConfig(),  # noqa: B008
    peft: PeftConfig | None = None,
    optimizer: OptimizerConfig = OptimizerConfig(),  # noqa: B008
    evaluation: EvaluationConfig = EvaluationConfig(),  # noqa: B008
    federation: Federation | None = None,
) -> FederatedLoop:
    """Compose a FedHomoLLM run: one frozen base shared by all clients, a peft adapter that travels.

    Args:
        model: the base model (default: the offline SmolLM2-135M-Instruct).
        data: records, client split and held-out splits (default: Shakespeare, one client per play).
        peft: any ``peft`` config (default: LoRA r=8 on the attention q/v projections).
        optimizer: each client's local optimiser.
        evaluation: extra validation metrics for instruction data (generation exact match, answer-set accuracy).
        federation: what every algorithm shares: strategy, rounds, output_dir, loggers, seed, secure
            aggregation, faults, privacy, client Trainer options, ... (:class:`~fedlit.federation.Federation`;
            default: its defaults). ``seed`` also seeds the adapter initialisation.
    """
    return adapter_loop(model, data, peft, lambda base, tokenizer: functools.partial(
        PeftModule, base, optimizer, evaluation, tokenizer), federation)


def adapter_loop(model: ModelConfig, data: DataConfig, peft: PeftConfig | None,
                 module: Callable[[PeftModel, PreTrainedTokenizerBase], ModuleFactory],
                 federation: Federation | None, **fingerprint: Any) -> FederatedLoop:
    """The loop of every algorithm whose clients share one frozen base and federate a peft adapter on it: the
    client's ``module`` (a factory, from the wrapped base and the tokenizer) is what differs. ``fingerprint``:
    the algorithm's own settings a resume must match, besides model, data and peft."""
    federation = federation or Federation()
    peft = peft or LoraConfig(**DEFAULT_LORA)
    tokenizer = load_tokenizer(model)
    federated = federation.backend.federated_data(data, tokenizer)
    peft_model = build_peft_model(load_base_model(model), peft, seed=federation.seed)
    return federated_loop(federated, module(peft_model, tokenizer), federation,
                          fingerprint={"model": model, "data": data, "peft": peft, **fingerprint})
