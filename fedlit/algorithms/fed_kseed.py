"""FedKSeed (Qin et al., ICML 2024; FATE-LLM 2.x): zeroth-order federated tuning where a client's update is one
coefficient per shared seed, so a round costs kilobytes whatever the model's size."""

from __future__ import annotations

import functools
from typing import Literal

from peft import LoraConfig, PeftConfig

from fedlit.algorithms.fed_homo_llm import DEFAULT_LORA
from fedlit.algorithms.federated_loop import federated_loop
from fedlit.data.federated import DataConfig
from fedlit.federation import Federation
from fedlit.lightning_modules import EvaluationConfig, build_peft_model
from fedlit.lightning_modules.zeroth_order import ZerothOrderConfig, ZerothOrderModule
from fedlit.models import ModelConfig, load_base_model, load_tokenizer
from fedlit.payload import canonical
from fedlit.server.loop import FederatedLoop


def fed_kseed(
    model: ModelConfig = ModelConfig(),  # noqa: B008 - frozen-by-convention config defaults
    data: DataConfig = DataConfig(),  # noqa: B008
    trainable: Literal["peft", "full"] = "peft",
    peft: PeftConfig | None = None,
    zeroth_order: ZerothOrderConfig = ZerothOrderConfig(),  # noqa: B008
    evaluation: EvaluationConfig = EvaluationConfig(),  # noqa: B008
    federation: Federation | None = None,
) -> FederatedLoop:
    """Compose a FedKSeed run: every client takes zeroth-order steps along directions drawn from K shared seeds and
    sends its K accumulated coefficients; FedAvg of those is FedKSeed's aggregation.

    Args:
        model: the base model.
        data: records, client split and held-out splits.
        trainable: ``peft``: the directions move a peft adapter's parameters (``peft``, default LoRA r=8 on q/v);
            ``full``: every parameter of the model (the paper's setting; every party then replays the coefficients
            over all weights, which costs K full-size random draws at most per fit).
        peft: the adapter when ``trainable`` is ``peft``.
        zeroth_order: K, the step size, the perturbation scale and the seeds' seed.
        evaluation: extra validation metrics (as for FedHomoLLM).
        federation: what every algorithm shares. DP-SGD and the signature watermark need gradients and are refused;
            so is compression (its grid has no level at zero, so the coefficients a client did not touch would
            travel as nonzero: the O(steps) uplink and the replay of only the seeds in use would be lost, for no
            gain over the changed coefficients that travel already).
    """
    federation = federation or Federation()
    if federation.example_privacy is not None or federation.watermark is not None:
        raise ValueError("fedkseed takes no gradients: example_privacy (DP-SGD) and watermark cannot apply; "
                         "client-level privacy and secure aggregation work on the coefficients")
    if federation.compression is not None:
        raise ValueError("fedkseed: compression cannot apply (its grid has no zero level: every untouched coefficient "
                         "would travel nonzero); a client already sends only its changed coefficients, 12 bytes a "
                         "step")
    if trainable not in ("peft", "full"):
        raise ValueError(f"trainable must be 'peft' or 'full', got {trainable!r}")
    tokenizer = load_tokenizer(model)
    federated = federation.backend.federated_data(data, tokenizer)
    base = load_base_model(model)
    if trainable == "full":
        if model.quantization is not None:
            raise ValueError("trainable: full cannot move k-bit quantized weights (model.quantization)")
        tuned = base.requires_grad_(True)
    else:
        tuned = build_peft_model(base, peft or LoraConfig(**DEFAULT_LORA), seed=federation.seed)
    initial = canonical({name: p for name, p in tuned.named_parameters() if p.requires_grad})
    factory = functools.partial(ZerothOrderModule, tuned, zeroth_order, initial, evaluation, tokenizer)
    return federated_loop(federated, factory, federation,
                          fingerprint={"model": model, "data": data, "trainable": trainable,
                                       "peft": peft if trainable == "peft" else None, "zeroth_order": zeroth_order})
