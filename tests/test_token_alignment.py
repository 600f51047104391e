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


def test_between_two_different_real_tokenizers(tiny_model_dir, other_tokenizer_model_dir, tmp_path) -> None:
    """The tiny model's byte-level BPE and the unigram ("▁") tokenizer trained on the same text: every entry with an
    exact twin maps onto it, every other onto an entry at the smallest edit distance (checked against rapidfuzz
    over the whole vocabulary), and the alignment of one line's two tokenisations pairs tokens whose character
    spans overlap, in order, covering both."""
    from rapidfuzz.distance import Levenshtein
    from transformers import AutoTokenizer

    from fedlit.data import token_alignment

    byte_level = AutoTokenizer.from_pretrained(tiny_model_dir)
    unigram = AutoTokenizer.from_pretrained(other_tokenizer_model_dir)
    source, target = token_alignment.vocabulary(byte_level), token_alignment.vocabulary(unigram)
    assert source != target
    mapped = token_alignment.cached_vocabulary_map(byte_level, unigram, tmp_path).tolist()
    texts = [token_text(t) for t in target]
    twins = 0
    for i, token in enumerate(source):
        text = token_text(token)
        if text in texts:
            twins += 1
            assert texts[mapped[i]] == text
        else:
            best = min(Levenshtein.distance(text, t) for t in texts)
            assert Levenshtein.distance(text, texts[mapped[i]]) == best
    assert 20 < twins < len(source)  # both kinds of entry occur
    line = "SPEAKER0:\nthe king is dead and the queen"
    first = byte_level.convert_ids_to_tokens(byte_level(line, add_special_tokens=False)["input_ids"])
    second = unigram.convert_ids_to_tokens(unigram(line, add_special_tokens=False)["input_ids"])
    assert len(first) != len(second) or first != second
    path = align_tokens(first, second)
    assert path[0] == (0, 0) and path[-1] == (len(first) - 1, len(second) - 1)
    assert all(b[0] - a[0] in (0, 1) and b[1] - a[1] in (0, 1) and b != a for a, b in zip(path, path[1:], strict=False))
    first_spans, second_spans = token_alignment.spans(first), token_alignment.spans(second)
    overlapping = sum(min(first_spans[i][1], second_spans[j][1]) > max(first_spans[i][0], second_spans[j][0])
                      for i, j in path)
    assert overlapping >= 0.8 * len(path)
