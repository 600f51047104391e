"""Private inference (InferDPT): the token perturbation mechanism."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from scipy.stats import chisquare
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedlit.privacy.inference import CandidateTable, usable_tokens


@pytest.fixture(scope="module")
def table(tiny_model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    embeddings = AutoModelForCausalLM.from_pretrained(tiny_model_dir).get_input_embeddings().weight.detach()
    return tokenizer, CandidateTable.build(embeddings, usable_tokens(tokenizer), k=8, chunk=50)


def test_the_filter_keeps_byte_level_word_tokens_and_drops_special_ones(table) -> None:
    tokenizer, candidates = table
    kept = set(candidates.tokens.tolist())
    assert tokenizer.eos_token_id not in kept
    word = tokenizer.convert_tokens_to_ids("Ġthe") if "Ġthe" in tokenizer.get_vocab() else None
    assert word is not None and word in kept  # a byte-level "Ġ" token decodes to " the"
    comma = tokenizer.convert_tokens_to_ids(",")
    assert comma not in kept  # punctuation is kept in place, never drawn


def test_one_tokens_draws_follow_the_exponential_mechanism(table) -> None:
    _, candidates = table
    token, epsilon = int(candidates.tokens[5]), 3.0
    ids, probabilities = candidates.probabilities(token, epsilon)
    row = candidates.row(token)
    expected = torch.exp(epsilon * candidates.scores[row].double() / 2)
    assert torch.allclose(probabilities, expected / expected.sum())
    generator = torch.Generator().manual_seed(0)
    draws = candidates.perturb([token] * 4000, epsilon, generator)
    counts = [draws.count(int(i)) for i in ids]
    assert sum(counts) == 4000
    assert chisquare(counts, (probabilities * 4000).tolist()).pvalue > 1e-3


def test_epsilon_infinity_keeps_the_prompt_and_zero_is_uniform(table) -> None:
    tokenizer, candidates = table
    ids = tokenizer("To be or not to be, that is the question.")["input_ids"]
    generator = torch.Generator().manual_seed(0)
    assert candidates.perturb(ids, math.inf, generator) == ids
    token = int(candidates.tokens[0])
    _, probabilities = candidates.probabilities(token, 0.0)
    assert torch.allclose(probabilities, torch.full_like(probabilities, 1 / len(probabilities)))
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        candidates.perturb(ids, -1.0, generator)
