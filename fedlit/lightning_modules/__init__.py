"""Client-side LightningModules."""

from fedlit.lightning_modules.causal_lm import CausalLMModule, EvaluationConfig, OptimizerConfig, shifted_token_loss
from fedlit.lightning_modules.peft_module import PeftModule, build_peft_model

__all__ = [
    "CausalLMModule",
    "EvaluationConfig",
    "OptimizerConfig",
    "PeftModule",
    "build_peft_model",
    "shifted_token_loss",
]
