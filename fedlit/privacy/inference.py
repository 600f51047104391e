"""Private inference (InferDPT, Tong et al. 2023): a client perturbs its prompt token by token before any server
sees it. Each token is replaced by a draw of the exponential mechanism over its candidate set, the ``k`` tokens
nearest to it in the model's input-embedding space, scored by closeness.

Privacy, per token: the score of a candidate is ``1 - d / d_max`` (``d``: its Euclidean distance to the true
token, ``d_max``: the largest such distance in the set), so the score's sensitivity is 1 and a draw with
probability proportional to ``exp(epsilon * score / 2)`` is ``epsilon``-DP for that token (McSherry and Talwar
2007), relative to the tokens whose candidate sets contain the draw. A prompt of ``n`` tokens composes to
``n * epsilon`` (basic composition). ``epsilon = inf`` returns the prompt unchanged; ``epsilon = 0`` draws
uniformly from the candidate set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase


def usable_tokens(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Ids of tokens a perturbation may use: no special token, and text with a letter or digit once decoded (a
    byte-level BPE's ``Ġword`` decodes to `` word`` and is kept; pure punctuation and byte fragments are not)."""
    special = set(tokenizer.all_special_ids)
    keep = [i for i in range(len(tokenizer)) if i not in special
            and any(ch.isalnum() for ch in tokenizer.decode([i], clean_up_tokenization_spaces=False))]
    return torch.tensor(keep, dtype=torch.long)


@dataclass
class CandidateTable:
    """For each usable token, its ``k`` nearest usable tokens (itself first) and their scores in [0, 1]."""

    tokens: torch.Tensor  # [n] usable token ids
    neighbours: torch.Tensor  # [n, k] token ids
    scores: torch.Tensor  # [n, k] 1 - distance / largest distance in the row

    @classmethod
    def build(cls, embeddings: torch.Tensor, tokens: torch.Tensor, k: int = 64, chunk: int = 1024) -> CandidateTable:
        """Nearest neighbours by Euclidean distance, in chunks (never an n x n matrix in memory at once)."""
        vectors = embeddings[tokens].float()
        k = min(k, len(tokens))
        neighbours, scores = [], []
        for start in range(0, len(tokens), chunk):
            distances = torch.cdist(vectors[start:start + chunk], vectors)
            nearest, index = distances.topk(k, dim=1, largest=False)
            largest = nearest[:, -1:].clamp(min=1e-12)
            neighbours.append(tokens[index])
            scores.append(1 - nearest / largest)
        return cls(tokens, torch.cat(neighbours), torch.cat(scores))

    def row(self, token: int) -> int | None:
        found = (self.tokens == token).nonzero()
        return int(found[0, 0]) if len(found) else None

    def probabilities(self, token: int, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The exponential mechanism's distribution over ``token``'s candidates: (candidate ids, probabilities)."""
        row = self.row(token)
        if row is None:
            raise ValueError(f"token {token} is not a usable token (special, or no letter or digit)")
        logits = epsilon * self.scores[row].double() / 2
        return self.neighbours[row], torch.softmax(logits, dim=0)

    def perturb(self, ids: list[int], epsilon: float, generator: torch.Generator) -> list[int]:
        """Each usable token replaced by a draw of the mechanism; other tokens (special, punctuation) kept."""
        if epsilon < 0 or math.isnan(epsilon):
            raise ValueError(f"epsilon must be >= 0 (or inf), got {epsilon}")
        if math.isinf(epsilon):
            return list(ids)
        out = []
        for token in ids:
            if self.row(token) is None:
                out.append(token)
                continue
            candidates, probabilities = self.probabilities(token, epsilon)
            out.append(int(candidates[torch.multinomial(probabilities.float(), 1, generator=generator)]))
        return out
