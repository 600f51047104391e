"""PEFT clients: the shared base wrapped once by ``peft``; only the adapter's tensors travel."""

from __future__ import annotations

import torch
from peft import PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import PreTrainedModel

from fedlit.lightning_modules.causal_lm import CausalLMModule
from fedlit.payload import Payload, canonical, check_compatible


def build_peft_model(base: PreTrainedModel, peft_config: PeftConfig, seed: int = 0) -> PeftModel:
    """Wrap the frozen base with a freshly initialised adapter; the initial adapter depends only on ``seed``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return get_peft_model(base, peft_config)


class PeftModule(CausalLMModule):
    """A :class:`CausalLMModule` over a ``PeftModel``; payload keys are peft's (as in ``adapter_model.safetensors``)."""

    model: PeftModel

    def trainable_state_dict(self) -> Payload:
        return canonical(get_peft_model_state_dict(self.model))

    def load_trainable_state_dict(self, payload: Payload, who: str = "client") -> None:
        check_compatible(get_peft_model_state_dict(self.model), payload, who)
        result = set_peft_model_state_dict(self.model, payload)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"adapter mismatch for {who}: peft could not place {unexpected[:5]}")
