"""Model and tokenizer loading through ``from_pretrained``, with errors that name what was asked for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from fedlit.models.default import DEFAULT_MODEL, prepare_default_model


@dataclass
class ModelConfig:
    """Which base model to load.

    Args:
        name_or_path: ``smollm2-135m-instruct`` (the offline default), a local directory, or a hub name.
        dtype: dtype of the frozen base weights (``float32``, ``bfloat16``, ``float16``).
        keep_blocks: a smaller model derived by uniform layer drop: keep this many transformer blocks
            (the first, the last and evenly spaced ones between); ``None`` keeps all.
    """

    name_or_path: str = DEFAULT_MODEL
    dtype: str = "float32"
    keep_blocks: int | None = None


def resolve_model_path(name_or_path: str) -> str:
    """Map the default model's alias to its prepared directory and check that local paths exist."""
    if name_or_path == DEFAULT_MODEL:
        return str(prepare_default_model())
    looks_local = name_or_path.startswith((".", "/", "~")) or Path(name_or_path).exists()
    if looks_local:
        path = Path(name_or_path).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model path '{name_or_path}' is not a model directory (no config.json at {path})"
            )
        return str(path)
    return name_or_path


def _dtype(name: str) -> torch.dtype:
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"model.dtype: unknown dtype '{name}' (use float32, bfloat16 or float16)")
    return value


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(config: ModelConfig) -> PreTrainedTokenizerBase:
    """The model's tokenizer; a missing pad token falls back to EOS (padding is masked out of the loss)."""
    path = resolve_model_path(config.name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as err:  # noqa: BLE001 - transformers raises OSError, ValueError, ... for a missing tokenizer
        local = Path(path)
        if local.is_dir() and not any((local / name).is_file() for name in _TOKENIZER_FILES):
            why = f"no tokenizer files there (none of {', '.join(_TOKENIZER_FILES)})"
        else:
            why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OSError(f"could not load the tokenizer of model '{config.name_or_path}' from {path}: {why}") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(config: ModelConfig) -> PreTrainedModel:
    """The frozen base causal LM, loaded once per process and shared by every simulated client."""
    path = resolve_model_path(config.name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(config.dtype))
    except OSError as err:
        raise OSError(
            f"could not load model '{config.name_or_path}': {err}. Offline, use a local directory "
            f"or the built-in '{DEFAULT_MODEL}'."
        ) from err
    if config.keep_blocks is not None:
        model = _layer_dropped(model, config)
    model.requires_grad_(False)
    return model


def _layer_dropped(model: PreTrainedModel, config: ModelConfig) -> PreTrainedModel:
    from fedlit.models.offsite import OffsiteConfig, build_emulator

    blocks = model.config.num_hidden_layers
    if not 3 <= config.keep_blocks <= blocks:
        raise ValueError(f"model.keep_blocks must be in 3..{blocks} for '{config.name_or_path}', "
                         f"got {config.keep_blocks}")
    if config.keep_blocks == blocks:
        return model
    smaller, _ = build_emulator(model, OffsiteConfig(1, 1, (config.keep_blocks - 2) / (blocks - 2)))
    return smaller
