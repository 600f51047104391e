"""Tiny random-initialised models and small data, written to temp dirs and loaded back through from_pretrained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

PLAYS = {
    "alpha": ["To be or not to be, that is the question.", "The rest is silence, my good lord."],
    "beta": ["Fair is foul and foul is fair.", "Out, damned spot! out, I say!"],
    "gamma": ["Now is the winter of our discontent.", "A horse! a horse! my kingdom for a horse!"],
}


def play_records(n_per_play: int = 40) -> list[dict[str, str]]:
    """Deterministic speaking turns; each play has its own phrasing, so a model can learn something."""
    records = []
    for play, lines in PLAYS.items():
        for i in range(n_per_play):
            records.append({"play": play, "character": f"SPEAKER{i % 3}", "text": lines[i % len(lines)]})
    return records


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer trained on the test text."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([r["text"] for r in play_records()] + ["SPEAKER0:\n"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<eos>")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, bos_token_id=fast.eos_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def plays_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "plays.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in play_records()))
    return path
