"""FedMKT's exchange: top-k logits round-trip, are checked for NaN, and with one tokenizer reduce to plain top-k KD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedlit.data.token_alignment import align_tokens
from fedlit.lightning_modules.top_k_logits import TopKLogits, top_k_distillation_loss


def test_top_k_logits_round_trip_and_refuse_nan() -> None:
    logits = torch.randn(5, 40, generator=torch.Generator().manual_seed(0))
    sent = TopKLogits.of(logits, 4)
    back = TopKLogits.from_bytes(sent.to_bytes())
    assert torch.equal(back.values, sent.values) and torch.equal(back.ids, sent.ids)
    assert torch.equal(sent.values, logits.sort(dim=-1, descending=True).values[:, :4])
    sent.check_finite("client 'a'")
    sent.values[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"client 'a': 1 of 20 top-k logits are NaN"):
        sent.check_finite("client 'a'")


def test_with_one_tokenizer_it_is_plain_top_k_distillation() -> None:
    generator = torch.Generator().manual_seed(1)
    teacher, student = torch.randn(6, 30, generator=generator), torch.randn(6, 30, generator=generator)
    tokens = ["The", "Ġcat", "s", "Ġsat", "Ġon", "Ġmats"]
    exchanged = TopKLogits.of(teacher, 5).aligned(align_tokens(tokens, tokens), 6, np.arange(30))
    values, ids = teacher.topk(5, dim=-1)
    assert torch.equal(exchanged.values, values) and torch.equal(exchanged.ids, ids)
    by_hand = sum(F.kl_div(F.log_softmax(student[p, ids[p]] / 2, -1), F.softmax(values[p] / 2, -1), reduction="sum")
                  for p in range(6)) / 6 * 4
    assert torch.allclose(top_k_distillation_loss(student, exchanged, temperature=2.0), by_hand)


def test_logits_follow_a_word_split_differently_and_ids_map_across_vocabularies() -> None:
    values = torch.arange(8.0).view(4, 2)
    ids = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7]])
    path = align_tokens(["The", "Ġcat", "s", "Ġsat"], ["▁The", "▁cats", "▁sat"])  # [(0,0), (1,1), (2,1), (3,2)]
    moved = TopKLogits(values, ids).aligned(path, 3, np.array([7, 6, 5, 4, 3, 2, 1, 0]))
    assert moved.values.tolist() == [[0, 1], [2, 3], [6, 7]]  # " cats" takes " cat"'s logits (the first piece)
    assert moved.ids.tolist() == [[7, 6], [5, 4], [1, 0]]
