"""Random-initialised weights of real architectures with SmolLM2's real tokenizer, saved where ``from_pretrained``
loads them: the shapes users fine-tune, without weights that no machine here can download. Every number measured on
them is a speed or memory figure, never a quality one."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

# name -> Llama shape (hidden, blocks, heads, KV heads, MLP width)
SHAPES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (16, 2, 2, 1, 32),  # compute close to zero: what is left is orchestration
    "smollm2-135m": (576, 30, 9, 3, 1536),
    "llama-1.1b": (1536, 37, 24, 8, 4096),  # 8x SmolLM2-135M's parameters (1.08B with its vocabulary)
    "llama-1.7b": (2048, 24, 32, 32, 8192),
    "llama-3b": (3072, 28, 24, 8, 8192),  # Llama 3.2 3B's blocks (3.1B parameters with SmolLM2's vocabulary)
    "llama-8b": (4096, 32, 32, 8, 14336),
}


def random_model(shape: str, directory: Path, dtype: torch.dtype = torch.bfloat16,
                 tokenizer: Path | None = None) -> Path:
    """``directory`` holding a Llama of ``shape`` (random weights, seed 0, in ``dtype``; drawn on the GPU when there
    is one: an 8B model in seconds) and SmolLM2's tokenizer (from ``tokenizer``, a directory holding its files, else
    the default model's); made once and reused."""
    if (directory / "config.json").is_file():
        return directory
    from fedlit.models.default import prepare_default_model

    tokenizer = AutoTokenizer.from_pretrained(tokenizer or prepare_default_model())
    hidden, blocks, heads, kv_heads, width = SHAPES[shape]
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=blocks,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=width,
                         max_position_embeddings=2048, tie_word_embeddings=shape in ("tiny", "smollm2-135m"),
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cuda" if torch.cuda.is_available() else "cpu").to(dtype)
    model.tie_weights()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.fill_(1.0) if "norm" in name else parameter.normal_(0.0, 0.02)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
