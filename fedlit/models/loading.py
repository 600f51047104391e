"""Model and tokenizer loading through ``from_pretrained``, with errors that name what was asked for."""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from fedlit.devices import torch_device
from fedlit.hub_code import apply_hub_code_policy
from fedlit.models.default import DEFAULT_MODEL, prepare_default_model
from fedlit.models.quantization import QuantizationConfig


@dataclass
class ModelConfig:
    """Which base model to load.

    Args:
        name_or_path: ``smollm2-135m-instruct`` (the offline default), a local directory, or a hub name.
        dtype: dtype of the frozen base weights (``float32``, ``bfloat16``, ``float16``).
        keep_blocks: a smaller model derived by uniform layer drop: keep this many transformer blocks
            (the first, the last and evenly spaced ones between); ``None`` keeps all.
        quantization: load the frozen base's linear layers in 4 or 8 bits (``bitsandbytes``); ``dtype`` is then
            the dtype of what stays unquantized (embeddings, norms, head).
        hub_code: run code from the model hub: transformers' Hub kernels and a model repository's own code
            (``trust_remote_code``). Off by default: nothing is fetched or executed, in any process of the run
            (see :mod:`fedlit.hub_code`).
        gradient_checkpointing: while training, keep only each block's input and compute its activations again
            in the backward pass (transformers' non-reentrant checkpointing): memory for compute, the same numbers.
            What QLoRA and FlowerTune's setup use on large bases; evaluation is unaffected.
    """

    name_or_path: str = DEFAULT_MODEL
    dtype: str = "float32"
    keep_blocks: int | None = None
    quantization: QuantizationConfig | None = None
    hub_code: bool = False
    gradient_checkpointing: bool = False


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
    apply_hub_code_policy(config.hub_code)
    return tokenizer_at(resolve_model_path(config.name_or_path), config.hub_code, config.name_or_path)


def tokenizer_at(path: str | Path, hub_code: bool = False, name: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer saved at ``path`` (a model's directory or a tokenizer's alone, as a client package holds
    it); ``name``: how errors name it."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=hub_code)
    except Exception as err:  # noqa: BLE001 - transformers raises OSError, ValueError, ... for a missing tokenizer
        local = Path(path)
        if local.is_dir() and not any((local / file).is_file() for file in _TOKENIZER_FILES):
            why = f"no tokenizer files there (none of {', '.join(_TOKENIZER_FILES)})"
        else:
            why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OSError(f"could not load the tokenizer of model '{name or path}' from {path}: {why}") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(config: ModelConfig, skip_modules: list[str] | None = None) -> PreTrainedModel:
    """The frozen base causal LM, loaded once per process and shared by every simulated client; quantized under
    ``config.quantization`` except ``skip_modules`` (module names, e.g. blocks that train in full), straight onto
    the GPU when one is visible (a Ray worker's own: Ray sets its ``CUDA_VISIBLE_DEVICES``)."""
    if config.quantization is not None and config.keep_blocks is not None:
        return _quantized_layer_drop(config, skip_modules)
    apply_hub_code_policy(config.hub_code)
    path = resolve_model_path(config.name_or_path)
    kwargs = {} if config.quantization is None else {"quantization_config": config.quantization.bnb_config(
        skip_modules)}
    if config.quantization is not None and torch.cuda.is_available():  # quantized on the GPU, never on the CPU
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(config.dtype),
                                                     trust_remote_code=config.hub_code, **kwargs)
    except OSError as err:
        raise OSError(
            f"could not load model '{config.name_or_path}': {err}. Offline, use a local directory "
            f"or the built-in '{DEFAULT_MODEL}'."
        ) from err
    if config.keep_blocks is not None:
        model = _layer_dropped(model, config)
    if config.quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        _one_cpu_path(model)
    model.requires_grad_(False)
    if config.gradient_checkpointing:  # (non-reentrant: the adapters get gradients though no input requires one)
        options = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # (its name in transformers 5; the old one warns)
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    return model


def _one_cpu_path(model: PreTrainedModel) -> None:
    """bitsandbytes (0.50) repacks a 4-bit layer's weight for a faster CPU inference kernel the first time the layer
    runs in eval mode without gradients; afterwards the layer passes no gradient to its adapter (training silently
    stops) and computes slightly different numbers. Clients evaluate and train the same shared base, so every
    4-bit layer keeps the one path that trains."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _quantized_layer_drop(config: ModelConfig, skip_modules: list[str] | None) -> PreTrainedModel:
    """Layer drop needs the weights in full, quantizing needs a checkpoint to load: drop, save to a temporary
    directory, load that quantized."""
    smaller = load_base_model(dataclasses.replace(config, quantization=None))
    with tempfile.TemporaryDirectory(prefix="fedlit-layer-drop-") as tmp:
        smaller.save_pretrained(tmp)
        del smaller
        return load_base_model(dataclasses.replace(config, name_or_path=tmp, keep_blocks=None), skip_modules)


def _layer_dropped(model: PreTrainedModel, config: ModelConfig) -> PreTrainedModel:
    from fedlit.models.offsite import OffsiteConfig, build_emulator

    blocks = model.config.num_hidden_layers
    if blocks < 3:
        raise ValueError(f"keep_blocks {config.keep_blocks} for model '{config.name_or_path}': it has {blocks} blocks, "
                         "and a layer drop keeps the first and last and needs at least 3: drop keep_blocks")
    if not 3 <= config.keep_blocks <= blocks:
        raise ValueError(f"keep_blocks for model '{config.name_or_path}' must be in 3..{blocks}, got "
                         f"{config.keep_blocks}")
    if config.keep_blocks == blocks:
        return model
    smaller, _ = build_emulator(model, OffsiteConfig(1, 1, (config.keep_blocks - 2) / (blocks - 2)))
    return smaller


def load_trained_model(adapter: str | None = None, model: str | None = None, base: str | None = None,
                       dtype: str = "float32", device: str = "auto",
                       quantization: QuantizationConfig | None = None) -> nn.Module:
    """A trained model to verify, query or benchmark, on ``device`` (see :func:`~fedlit.devices.torch_device`): the
    peft ``adapter`` directory loaded with plain peft on its base (``base``, else the base its
    ``adapter_config.json`` names), or the full model directory ``model`` (e.g. FedOST's plugged-in model, or the
    default model's name); with ``quantization``, the base in k bits (placed by bitsandbytes: the GPU if any)."""
    if (adapter is None) == (model is None):
        raise ValueError("give either an adapter directory or a full model (directory or name), not both")
    target = torch_device(device)  # a device this machine lacks is refused before anything loads
    trained = _trained_model(adapter, model, base, dtype, quantization)
    return trained if quantization is not None else trained.to(target)


def trained_model_tokenizer(trained: nn.Module, model: str | None = None,
                            base: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of what :func:`load_trained_model` loaded: the full ``model``'s, else its base's (``base``, else
    the one the adapter names)."""
    name = model or base or trained.peft_config["default"].base_model_name_or_path
    return load_tokenizer(ModelConfig(name))


def _trained_model(adapter: str | None, model: str | None, base: str | None, dtype: str,
                   quantization: QuantizationConfig | None) -> nn.Module:
    if model is not None:
        return load_base_model(ModelConfig(model, dtype=dtype, quantization=quantization))
    try:
        config = PeftConfig.from_pretrained(adapter)
    except (OSError, ValueError) as error:
        raise OSError(f"adapter {adapter}: not a peft adapter directory ({error})") from None
    name = base or config.base_model_name_or_path
    if not name:
        raise ValueError(f"adapter {adapter} does not name its base model: give it with --base")
    return PeftModel.from_pretrained(load_base_model(ModelConfig(name, dtype=dtype, quantization=quantization)),
                                     adapter)
