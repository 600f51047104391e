"""Token alignment across tokenizers (FedMKT, after FuseLLM): which token of another vocabulary stands for each of
ours, and which positions of two tokenisations of the same text correspond. Distillation between models with
different tokenizers needs both: logits live on positions and vocabularies that differ."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein
from transformers import PreTrainedTokenizerBase

from fedlit.files import atomic_write_bytes, cache_dir

# How byte-level BPE (GPT-2, SmolLM2) and SentencePiece spell a leading space or a newline inside a token.
_MARKERS = str.maketrans({"Ġ": " ", "▁": " ", "Ċ": "\n"})


def token_text(token: str) -> str:
    """A vocabulary entry as the text it stands for (``Ġword`` and ``▁word`` both become `` word``)."""
    return token.translate(_MARKERS)


def vocabulary_map(source: list[str], target: list[str]) -> np.ndarray:
    """For each source token (by id), the id of the target token with the smallest edit distance between the texts
    they stand for: exact matches by dictionary, the rest by rapidfuzz's C++ search over the target vocabulary
    (first of the nearest on ties), so a 49k x 50k mapping is one lookup per token that has no exact twin."""
    texts = [token_text(t) for t in target]
    exact: dict[str, int] = {}
    for index, text in enumerate(texts):
        exact.setdefault(text, index)
    mapped = np.empty(len(source), dtype=np.int64)
    for index, token in enumerate(source):
        text = token_text(token)
        found = exact.get(text)
        if found is None:
            found = process.extractOne(text, texts, scorer=Levenshtein.distance)[2]
        mapped[index] = found
    return mapped


def vocabulary(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The tokenizer's entries by id."""
    return tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))


def cached_vocabulary_map(source: PreTrainedTokenizerBase, target: PreTrainedTokenizerBase,
                          directory: Path | None = None) -> np.ndarray:
    """:func:`vocabulary_map` of two tokenizers, computed once per pair and cached (a plain ``.npy`` array, read
    without pickle) under ``directory`` (default ``<fedlit cache>/vocabulary_maps``), keyed by both vocabularies."""
    first, second = vocabulary(source), vocabulary(target)
    key = hashlib.sha256("\x00".join(first).encode() + b"\x01" + "\x00".join(second).encode()).hexdigest()[:32]
    path = (directory or cache_dir() / "vocabulary_maps") / f"{key}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    mapped = vocabulary_map(first, second)
    buffer = io.BytesIO()
    np.save(buffer, mapped, allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())
    return mapped


def spans(tokens: list[str]) -> np.ndarray:
    """Each token's [start, end) character span in the text the tokens spell, one after another."""
    lengths = np.array([len(token_text(t)) for t in tokens])
    ends = np.cumsum(lengths)
    return np.stack([ends - lengths, ends], axis=1)


def align_tokens(first: list[str], second: list[str]) -> list[tuple[int, int]]:
    """The dynamic-programming (DTW) alignment of two tokenisations of one text: a monotone path of (i, j) position
    pairs from (0, 0) to the ends, each step advancing one side or both, that minimises the summed cost of the
    pairs. A pair costs how far apart the two tokens' character spans are (start and end offsets); FuseLLM's edit
    distance between the token texts would pair the "s" of " cat" + "s" with a following " sat" (3 edits) rather
    than with " cats" (4 edits), while the spans say which piece belongs to which word."""
    if not first or not second:
        raise ValueError("align_tokens needs two non-empty token sequences")
    a, b = spans(first), spans(second)
    cost = np.abs(a[:, None, :] - b[None, :, :]).sum(axis=2).astype(np.float64)
    n, m = cost.shape
    total = np.full((n + 1, m + 1), np.inf)
    total[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            total[i, j] = cost[i - 1, j - 1] + min(total[i - 1, j - 1], total[i - 1, j], total[i, j - 1])
    path, i, j = [], n, m
    while (i, j) != (0, 0):
        path.append((i - 1, j - 1))
        moves = {(i - 1, j - 1): total[i - 1, j - 1], (i - 1, j): total[i - 1, j], (i, j - 1): total[i, j - 1]}
        i, j = min(moves, key=moves.get)  # the diagonal first on ties (dicts keep insertion order)
    return path[::-1]
