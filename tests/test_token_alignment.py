"""Token alignment across tokenizers (FedMKT): vocabulary mapping and the DP alignment, against hand-worked cases."""

from __future__ import annotations

import pytest

from fedlit.data.token_alignment import align_tokens, token_text, vocabulary_map


def test_byte_level_and_sentencepiece_spell_the_same_text() -> None:
    assert token_text("Ġking") == token_text("▁king") == " king"
    assert token_text("Ċ") == "\n"


def test_a_word_split_differently_pairs_every_piece_with_the_whole() -> None:
    # "The cats sat": one tokenizer splits " cats" into " cat" + "s"
    first = ["The", "Ġcat", "s", "Ġsat"]
    second = ["▁The", "▁cats", "▁sat"]
    # by hand, spans: The 0-3, " cat" 3-7, "s" 7-8, " sat" 8-12 against " The" 0-4, " cats" 4-9, " sat" 9-13;
    # "s"-" cats" costs 3 + 1 = 4, "s"-" sat" 2 + 5 = 7: the piece goes with its word
    assert align_tokens(first, second) == [(0, 0), (1, 1), (2, 1), (3, 2)]
    assert align_tokens(second, first) == [(0, 0), (1, 1), (1, 2), (2, 3)]  # the same pairing, seen from the other side
    assert align_tokens(["a", "b"], ["a", "b"]) == [(0, 0), (1, 1)]
    with pytest.raises(ValueError, match="non-empty"):
        align_tokens([], ["a"])


def test_the_vocabulary_map_takes_exact_twins_then_the_nearest_by_edit_distance() -> None:
    source = ["Ġking", "Ġqueen", "Ġkings", "xyz", "Ċ"]
    target = ["▁queen", "▁king", "<unk>", "▁kin", "\n", "xy"]
    # " king" and " queen" have exact twins; " kings" is 1 edit from " king" (and 2 from " kin"); "xyz" is 1 from
    # "xy"; the byte-level newline is the target's "\n"
    assert vocabulary_map(source, target).tolist() == [1, 0, 1, 5, 4]


def test_the_map_between_two_real_tokenizers_is_computed_once(tiny_model_dir, tmp_path, monkeypatch) -> None:
    from transformers import AutoTokenizer

    from fedlit.data import token_alignment

    ours = AutoTokenizer.from_pretrained(tiny_model_dir)
    mapped = token_alignment.cached_vocabulary_map(ours, ours, tmp_path)
    assert mapped.tolist() == list(range(len(ours)))  # a vocabulary maps onto itself
    monkeypatch.setattr(token_alignment, "vocabulary_map", lambda *a: pytest.fail("computed again"))
    assert token_alignment.cached_vocabulary_map(ours, ours, tmp_path).tolist() == mapped.tolist()
