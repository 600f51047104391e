"""PEFT clients: the shared base wrapped once by ``peft``; only the adapter's trainable tensors travel.

The payload is the trainable parameters by name (the base class's), not ``get_peft_model_state_dict``:
for P-tuning that function returns the prompt encoder's *output*, not the encoder's trainable weights,
so averaging it would federate the wrong thing. ``save_pretrained`` still writes peft's own format.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftConfig, PeftModel, PeftType, get_peft_model
from transformers import PreTrainedModel

from fedlit.lightning_modules.causal_lm import CausalLMModule

# peft methods that wrap bitsandbytes' 4-bit layers but fail in their forward (peft 0.21): refused up front.
NOT_ON_4BIT = frozenset({PeftType.LOHA, PeftType.LOKR})


def quantized_bits(model: PreTrainedModel) -> int | None:
    """4 or 8 for a base loaded in k bits (``model.quantization``), else ``None``."""
    return 4 if getattr(model, "is_loaded_in_4bit", False) else 8 if getattr(model, "is_loaded_in_8bit", False) \
        else None


def build_peft_model(base: PreTrainedModel, peft_config: PeftConfig, seed: int = 0) -> PeftModel:
    """Wrap the frozen base with a freshly initialised adapter; the initial adapter depends only on ``seed``. On a
    k-bit base, a peft method that cannot adapt k-bit layers is refused by name."""
    bits = quantized_bits(base)
    if bits == 4 and peft_config.peft_type in NOT_ON_4BIT:
        raise ValueError(f"peft {peft_config.peft_type.value} cannot adapt a 4-bit quantized base "
                         "(model.quantization.bits 4): use LoRA, IA3, VeRA, OFT or a prompt method, or 8 bits")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        try:
            return get_peft_model(base, peft_config)
        except (ValueError, TypeError, NotImplementedError) as error:
            if bits is None:
                raise
            raise ValueError(f"peft {peft_config.peft_type.value} cannot adapt this {bits}-bit quantized base "
                             f"(model.quantization): {error}") from None


class PeftModule(CausalLMModule):
    """A :class:`CausalLMModule` over a ``PeftModel`` of any method: LoRA (DoRA, rsLoRA), IA3, prompt tuning,
    P-tuning or prefix tuning.

    Prompt tuning and P-tuning prepend virtual tokens to the input; their logits are dropped so that the
    loss and metrics see exactly the real tokens. Prefix tuning works through the attention cache and
    adds no positions.
    """

    model: PeftModel

    def save_adapter(self, directory: str | Path) -> None:
        """peft's own format, which plain ``PeftModel.from_pretrained`` loads."""
        self.model.save_pretrained(directory)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = super().forward(batch)
        config = self.model.active_peft_config
        if config.is_prompt_learning and config.peft_type != PeftType.PREFIX_TUNING:
            logits = logits[:, config.num_virtual_tokens:]
        return logits
