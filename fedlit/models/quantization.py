"""k-bit frozen bases (QLoRA, Dettmers et al. 2023): the base's linear layers in 4-bit NF4/FP4 or 8-bit through
``bitsandbytes`` (CPU backend here, CUDA kernels on GPUs), loaded by transformers' ``BitsAndBytesConfig`` and
readied for adapters by peft's ``prepare_model_for_kbit_training``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class QuantizationConfig:
    """How a frozen base is quantized when it loads.

    Args:
        bits: 4 (QLoRA's NF4/FP4 blocks) or 8 (LLM.int8()).
        quant_type: 4-bit data type: ``nf4`` (normal float, for normally distributed weights) or ``fp4``.
        double_quant: 4-bit: quantize the quantization constants too (about 0.4 bits a parameter less).
        compute_dtype: 4-bit: the dtype the dequantized weights multiply in (``bfloat16`` or ``float32``).
    """

    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float32"] = "bfloat16"

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"model.quantization.bits must be 4 or 8, got {self.bits}")
        if self.quant_type not in ("nf4", "fp4"):
            raise ValueError(f"model.quantization.quant_type must be nf4 or fp4, got {self.quant_type!r}")
        if self.compute_dtype not in ("bfloat16", "float32"):
            raise ValueError(f"model.quantization.compute_dtype must be bfloat16 or float32, got "
                             f"{self.compute_dtype!r}")

    def bnb_config(self, skip_modules: list[str] | None = None) -> object:
        """transformers' ``BitsAndBytesConfig``; ``skip_modules`` stay in full precision (the head, always)."""
        try:
            import bitsandbytes  # noqa: F401 - a clear error here beats transformers' later one
        except ModuleNotFoundError:
            raise ModuleNotFoundError("model.quantization needs bitsandbytes: pip install 'fedlit[quant]'") from None
        from transformers import BitsAndBytesConfig

        skip = ["lm_head", *(skip_modules or [])]
        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.quant_type,
                                  bnb_4bit_use_double_quant=self.double_quant,
                                  bnb_4bit_compute_dtype=getattr(torch, self.compute_dtype),
                                  llm_int8_skip_modules=skip)
