"""Model and tokenizer loading, including the offline default model."""

from fedlit.models.default import DEFAULT_MODEL, prepare_default_model
from fedlit.models.identity import base_of, model_fingerprint
from fedlit.models.loading import (
    ModelConfig,
    load_base_model,
    load_tokenizer,
    load_trained_model,
    resolve_model_path,
    tokenizer_at,
    trained_model_tokenizer,
)
from fedlit.models.quantization import QuantizationConfig

__all__ = [
    "DEFAULT_MODEL",
    "ModelConfig",
    "QuantizationConfig",
    "base_of",
    "load_base_model",
    "load_tokenizer",
    "load_trained_model",
    "model_fingerprint",
    "prepare_default_model",
    "resolve_model_path",
    "tokenizer_at",
    "trained_model_tokenizer",
]
