"""Which base model this is: a fingerprint that keys, caches and checks can name without trusting a path."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def base_of(model: nn.Module) -> nn.Module:
    """The frozen base under a ``PeftModel`` (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def model_fingerprint(model: nn.Module) -> str:
    """A hash of the base model's architecture and input embeddings (in bfloat16, so a float32 and a bfloat16
    load of the same weights agree; embeddings are never k-bit quantized)."""
    base = base_of(model)
    config = base.config
    digest = hashlib.sha256()
    for name in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers"):
        digest.update(f"{name}={getattr(config, name, None)};".encode())
    embeddings = base.get_input_embeddings().weight.detach()
    digest.update(embeddings.to("cpu", torch.bfloat16).view(torch.int16).numpy().tobytes())
    return digest.hexdigest()
