"""FedHomoLLM (FATE-LLM): clients share one base model and federate its PEFT parameters."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse.typing import PositiveInt
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from peft import LoraConfig, PeftConfig

from fedlit.algorithms.federation import federated_loop
from fedlit.data.federated import DataConfig, build_federated_data
from fedlit.faults import FaultPolicy
from fedlit.lightning_modules import EvaluationConfig, OptimizerConfig, PeftModule, build_peft_model
from fedlit.loop import FederatedLoop
from fedlit.models import ModelConfig, load_base_model, load_tokenizer
from fedlit.privacy import ClientDPConfig, ExampleDPConfig
from fedlit.secure import SecureAggregationConfig
from fedlit.strategies import Strategy

DEFAULT_LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}


def fed_homo_llm(
    model: ModelConfig = ModelConfig(),  # noqa: B008 - frozen-by-convention config defaults
    data: DataConfig = DataConfig(),  # noqa: B008
    peft: PeftConfig | None = None,
    optimizer: OptimizerConfig = OptimizerConfig(),  # noqa: B008
    evaluation: EvaluationConfig = EvaluationConfig(),  # noqa: B008
    strategy: Strategy | None = None,
    rounds: PositiveInt = 3,
    eval_every: PositiveInt = 1,
    output_dir: str | Path = "outputs/fedlit",
    loggers: Sequence[Logger] | None = None,
    seed: int = 0,
    progress: bool = True,
    client_callbacks: Sequence[Callback] = (),
    secure_aggregation: SecureAggregationConfig | None = None,
    faults: FaultPolicy = FaultPolicy(),  # noqa: B008
    privacy: ClientDPConfig | None = None,
    example_privacy: ExampleDPConfig | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
) -> FederatedLoop:
    """Compose a FedHomoLLM run: one frozen base shared by all clients, a peft adapter that travels.

    Args:
        model: the base model (default: the offline SmolLM2-135M-Instruct).
        data: records, client split and held-out splits (default: Shakespeare, one client per play).
        peft: any ``peft`` config (default: LoRA r=8 on the attention q/v projections).
        optimizer: each client's local optimiser.
        evaluation: extra validation metrics for instruction data (generation exact match, answer-set accuracy).
        strategy: client sampling and aggregation (default: FedAvg over all clients).
        rounds: federated rounds.
        eval_every: evaluate after every n-th round (round 0 and the last are always evaluated).
        output_dir: metrics.csv, adapter/, checkpoints/ and logs/.
        loggers: Lightning loggers for round metrics (default: a CSVLogger under ``output_dir/logs``).
        seed: seeds the adapter initialisation, the data split, client sampling and every client fit.
        progress: Rich progress over rounds and clients.
        client_callbacks: extra Lightning callbacks for every client fit (e.g. ``fedlit.callbacks.FedProx``).
        secure_aggregation: mask client updates so the server learns only their weighted mean
            (``fedlit.secure``); ``None`` sends adapters in the clear.
        faults: what happens to clients that raise, stall or send bad updates (``fedlit.faults.FaultPolicy``).
        privacy: client-level differential privacy, DP-FedAvg (``fedlit.privacy.ClientDPConfig``).
        example_privacy: example-level differential privacy, DP-SGD in every client
            (``fedlit.privacy.ExampleDPConfig``).
        trainer_kwargs: ``lightning.Trainer`` options for every client fit.
    """
    peft = peft or LoraConfig(**DEFAULT_LORA)
    tokenizer = load_tokenizer(model)
    federated = build_federated_data(data, tokenizer)
    peft_model = build_peft_model(load_base_model(model), peft, seed=seed)
    return federated_loop(
        federated, functools.partial(PeftModule, peft_model, optimizer, evaluation, tokenizer),
        strategy=strategy, rounds=rounds, eval_every=eval_every, output_dir=output_dir, loggers=loggers, seed=seed,
        progress=progress, client_callbacks=client_callbacks, secure_aggregation=secure_aggregation, faults=faults,
        privacy=privacy, example_privacy=example_privacy,
        fingerprint={"model": model, "data": data, "peft": peft},
        trainer_kwargs=trainer_kwargs,
    )
