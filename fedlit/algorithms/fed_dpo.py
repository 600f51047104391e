"""Federated DPO: FedHomoLLM's shape (one frozen base, a peft adapter that travels) with preference pairs and the
DPO loss in every client; the reference policy is the base with the adapter off, so nothing else is loaded."""

from __future__ import annotations

import functools

from peft import PeftConfig

from fedlit.algorithms.fed_homo_llm import adapter_loop
from fedlit.data.preferences import PreferenceDataConfig
from fedlit.federation import Federation
from fedlit.lightning_modules import OptimizerConfig
from fedlit.lightning_modules.preference_optimization import DPOConfig, DPOModule
from fedlit.models import ModelConfig
from fedlit.server.loop import FederatedLoop


def fed_dpo(
    model: ModelConfig = ModelConfig(),  # noqa: B008 - frozen-by-convention config defaults
    data: PreferenceDataConfig = PreferenceDataConfig(),  # noqa: B008
    peft: PeftConfig | None = None,
    optimizer: OptimizerConfig = OptimizerConfig(),  # noqa: B008
    dpo: DPOConfig = DPOConfig(),  # noqa: B008
    federation: Federation | None = None,
) -> FederatedLoop:
    """Compose a federated DPO run.

    Args:
        model: the base model, also the reference policy (default: the offline SmolLM2-135M-Instruct).
        data: preference records (prompt, chosen, rejected), their client split and held-out splits.
        peft: any ``peft`` config (default: LoRA r=8 on the attention q/v projections).
        optimizer: each client's local optimiser.
        dpo: the loss (beta, label smoothing).
        federation: what every algorithm shares (strategy, secure aggregation, client-level DP, compression,
            backend, ...). DP-SGD (``example_privacy``) is refused: it clips per sequence, and a DPO example is a
            pair of sequences.
    """
    if federation is not None and federation.example_privacy is not None:
        raise ValueError("example_privacy (DP-SGD) clips each sequence's gradient, but a DPO example is a pair of "
                         "sequences: use privacy (client-level DP) with fedlit fedpo")
    return adapter_loop(model, data, peft, lambda base, tokenizer: functools.partial(
        DPOModule, base, optimizer, dpo, tokenizer), federation, dpo=dpo)
