"""FedMKT's knowledge: what a model predicts on the shared public texts (each position's top-k logits and each
text's cross-entropy) in a fixed layout that travels as a payload, carried onto another tokenizer, and distilled
from where the teacher does better than the student (FedMKT's dual minimum cross-entropy)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from fedlit.data.datamodule import IGNORE_INDEX
from fedlit.data.token_alignment import align_tokens, cached_vocabulary_map, vocabulary
from fedlit.faults import UnusableUpdate
from fedlit.lightning_modules.top_k_logits import TopKLogits, top_k_distillation_loss
from fedlit.payload import Payload

PREFIX = "knowledge."


@dataclass
class PublicTexts:
    """The public texts as one tokenizer writes them (no special tokens): ``input_ids`` [N, length] right-padded,
    ``lengths`` [N] tokens per text, ``scored`` [N, length]: the tokens whose prediction is knowledge (those of the
    text's response, from character ``response_starts[i]`` on; never token 0, which nothing predicts)."""

    texts: list[str]
    tokens: list[list[str]]
    input_ids: torch.Tensor
    lengths: torch.Tensor
    scored: torch.Tensor
    response_chars: torch.Tensor
    pad_token_id: int

    @classmethod
    def encode(cls, texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, length: int,
               response_starts: Sequence[int] | None = None) -> PublicTexts:
        """Every text must fit ``length`` tokens: a cut text would no longer align with another tokenizer's."""
        starts = list(response_starts) if response_starts is not None else [0] * len(texts)
        encoded = [tokenizer(text, add_special_tokens=False, return_offsets_mapping=True) for text in texts]
        ids = [e["input_ids"] for e in encoded]
        too_long = [i for i, row in enumerate(ids) if len(row) > length or len(row) < 2]
        if too_long:
            raise ValueError(f"public text {too_long[0]} ({texts[too_long[0]][:40]!r}...) is "
                             f"{len(ids[too_long[0]])} tokens for {tokenizer.name_or_path}'s tokenizer; public texts "
                             f"must be 2..{length} tokens (max_length) for every tokenizer")
        padded = torch.full((len(ids), length), tokenizer.pad_token_id, dtype=torch.long)
        scored = torch.zeros(len(ids), length, dtype=torch.bool)
        for i, (row, e) in enumerate(zip(ids, encoded, strict=True)):
            padded[i, : len(row)] = torch.tensor(row)
            scored[i, : len(row)] = torch.tensor([begin >= starts[i] for begin, _ in e["offset_mapping"]])
            scored[i, 0] = False
        chars = torch.tensor([len(text) - start for text, start in zip(texts, starts, strict=True)])
        return cls(list(texts), [tokenizer.convert_ids_to_tokens(row) for row in ids], padded,
                   torch.tensor([len(row) for row in ids]), scored, chars, tokenizer.pad_token_id)

    def __len__(self) -> int:
        return len(self.texts)

    def batch(self, indices: torch.Tensor, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Texts ``indices`` as a causal-LM batch on ``device``, cut to its longest text; only scored tokens are
        labelled."""
        lengths = self.lengths[indices]
        ids = self.input_ids[indices, : int(lengths.max())]
        mask = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
        labels = ids.masked_fill(~self.scored[indices, : ids.shape[1]], IGNORE_INDEX)
        return {"input_ids": ids.to(device), "attention_mask": mask.long().to(device), "labels": labels.to(device)}


@dataclass
class Knowledge:
    """``ids`` (int32) / ``values`` [N, length, k]: row j of text i holds the k largest logits of the prediction of
    token j (rows of tokens that are not scored: zeros); ``ce`` [N]: each text's cross-entropy over its scored tokens
    in nats per character of its response, comparable across tokenizers (per token it would not be)."""

    ids: torch.Tensor
    values: torch.Tensor
    ce: torch.Tensor

    def payload(self, prefix: str = PREFIX) -> Payload:
        return OrderedDict([(f"{prefix}ce", self.ce), (f"{prefix}ids", self.ids), (f"{prefix}values", self.values)])

    @classmethod
    def from_payload(cls, payload: Payload, prefix: str = PREFIX) -> Knowledge:
        return cls(payload[f"{prefix}ids"], payload[f"{prefix}values"], payload[f"{prefix}ce"])

    @classmethod
    def empty(cls, texts: int, length: int, k: int) -> Knowledge:
        return cls(torch.zeros(texts, length, k, dtype=torch.int32), torch.zeros(texts, length, k),
                   torch.zeros(texts))

    def check_finite(self, who: str) -> None:
        """NaN/Inf in what travels would poison every party that distils from it: refused by name (FATE-LLM #144)."""
        TopKLogits(self.values, self.ids).check_finite(who)
        if not torch.isfinite(self.ce).all():
            raise UnusableUpdate(f"{who}: {int((~torch.isfinite(self.ce)).sum())} public cross-entropies are NaN "
                                 "or infinite")


@torch.no_grad()
def knowledge_of(module: torch.nn.Module, public: PublicTexts, k: int, batch_size: int) -> Knowledge:
    """The knowledge of ``module`` (a batch -> logits module, e.g. a CausalLMModule; run it in eval mode) on every
    public text, in batches."""
    out = Knowledge.empty(len(public), public.input_ids.shape[1], k)
    device = next(module.parameters()).device
    for start in range(0, len(public), batch_size):
        indices = torch.arange(start, min(start + batch_size, len(public)))
        logits = module(public.batch(indices, device)).float().cpu()
        for row, text in enumerate(indices.tolist()):
            scored = public.scored[text].nonzero().flatten()  # tokens j, predicted by the logits at j - 1
            top = TopKLogits.of(logits[row, scored - 1], k)
            out.ids[text, scored], out.values[text, scored] = top.ids.to(torch.int32), top.values
            loss = F.cross_entropy(logits[row, scored - 1], public.input_ids[text, scored], reduction="sum")
            out.ce[text] = loss / public.response_chars[text]
    return out


class KnowledgeBridge:
    """Carries knowledge from one tokenizer's layout of the public texts to another's: positions by the DP alignment
    of the two tokenisations of each text, token ids by the cached vocabulary map (both computed once). The same
    tokenizer on both sides is the identity."""

    def __init__(self, source: PublicTexts, target: PublicTexts, source_tokenizer: PreTrainedTokenizerBase,
                 target_tokenizer: PreTrainedTokenizerBase) -> None:
        self.source, self.target = source, target
        self.identity = vocabulary(source_tokenizer) == vocabulary(target_tokenizer)
        self.tokenizers = (source_tokenizer, target_tokenizer)

    @cached_property
    def paths(self) -> list[list[tuple[int, int]]]:
        return [align_tokens(a, b) for a, b in zip(self.source.tokens, self.target.tokens, strict=True)]

    @cached_property
    def vocabulary_map(self) -> np.ndarray:
        return cached_vocabulary_map(*self.tokenizers)

    def carry(self, knowledge: Knowledge) -> Knowledge:
        if self.identity:
            return knowledge
        out = Knowledge.empty(len(self.target), self.target.input_ids.shape[1], knowledge.ids.shape[-1])
        out.ce = knowledge.ce.clone()
        for text, path in enumerate(self.paths):
            n = int(self.target.lengths[text])
            source = TopKLogits(knowledge.values[text], knowledge.ids[text])
            carried = source.aligned(path, n, self.vocabulary_map)
            out.ids[text, 1:n], out.values[text, 1:n] = carried.ids[1:], carried.values[1:]  # row 0: predicts nothing
        return out


def dual_min_selection(own_ce: torch.Tensor, teachers_ce: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FedMKT's dual minimum cross-entropy: per text, the teacher (row of ``teachers_ce`` [teachers, N]) with the
    lowest cross-entropy, and whether it beats the student's own; returns (best teacher [N], taught [N])."""
    best_ce, best = teachers_ce.min(dim=0)
    return best, best_ce < own_ce


def chosen(knowledge: Sequence[Knowledge], best: torch.Tensor) -> Knowledge:
    """Per text, the knowledge of teacher ``best[text]``."""
    texts = torch.arange(len(best))
    return Knowledge(*(torch.stack([getattr(k, field) for k in knowledge])[best, texts]
                       for field in ("ids", "values", "ce")))


@dataclass
class PublicTeacher:
    """The public texts in the student's layout, a teacher's knowledge carried onto it, and which texts it
    teaches."""

    public: PublicTexts
    knowledge: Knowledge
    taught: torch.Tensor

    def loss(self, student_logits: torch.Tensor, indices: torch.Tensor, temperature: float) -> torch.Tensor:
        """Top-k KD of ``student_logits`` (the batch of texts ``indices``) on the taught texts' positions (zero when
        none is taught)."""
        width = student_logits.shape[1]
        mask = (self.public.scored[indices, 1:width] & self.taught[indices][:, None]).to(student_logits.device)
        if not mask.any():
            return student_logits.sum() * 0.0
        rows = self.knowledge.ids[indices, 1:width].to(student_logits.device), \
            self.knowledge.values[indices, 1:width].to(student_logits.device)
        teacher = TopKLogits(rows[1][mask], rows[0][mask].long())
        return top_k_distillation_loss(student_logits[:, :-1][mask], teacher, temperature)
