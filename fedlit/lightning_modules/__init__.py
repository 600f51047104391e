"""Client-side LightningModules."""

from fedlit.lightning_modules.causal_lm import CausalLMModule, EvaluationConfig, OptimizerConfig, shifted_token_loss
from fedlit.lightning_modules.knowledge_distillation import (
    DistillationConfig,
    DistillationLossConfig,
    KnowledgeDistillationModule,
)
from fedlit.lightning_modules.mutual_distillation import MutualDistillation
from fedlit.lightning_modules.peft_module import PeftModule, build_peft_model

__all__ = [
    "CausalLMModule",
    "DistillationConfig",
    "DistillationLossConfig",
    "EvaluationConfig",
    "KnowledgeDistillationModule",
    "MutualDistillation",
    "OptimizerConfig",
    "PeftModule",
    "build_peft_model",
    "shifted_token_loss",
]
