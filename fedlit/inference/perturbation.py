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

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedlit.files import atomic_write_bytes, cache_dir
from fedlit.models.identity import model_fingerprint

log = logging.getLogger(__name__)

TABLE_FORMAT = "fedlit-candidates/1"


def check_epsilon(epsilon: float) -> None:
    """The mechanism's epsilon: any number >= 0, or inf (no perturbation)."""
    if epsilon < 0 or math.isnan(epsilon):
        raise ValueError(f"epsilon must be >= 0 (or inf), got {epsilon}")


def usable_tokens(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Ids of tokens a perturbation may use: no special or added token (SmolLM2's ``<issue_comment>`` is one that
    is not marked special), and text with a letter or digit once decoded (a byte-level BPE's ``Ġword`` decodes to
    `` word`` and is kept; pure punctuation and byte fragments are not)."""
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    keep = [i for i in range(len(tokenizer)) if i not in special
            and any(ch.isalnum() for ch in tokenizer.decode([i], clean_up_tokenization_spaces=False))]
    return torch.tensor(keep, dtype=torch.long)


@dataclass
class CandidateTable:
    """For each usable token, its ``k`` nearest usable tokens (itself first) and their scores in [0, 1]."""

    tokens: torch.Tensor  # [n] usable token ids
    neighbours: torch.Tensor  # [n, k] token ids
    scores: torch.Tensor  # [n, k] 1 - distance / largest distance in the row
    rows: torch.Tensor = field(init=False, repr=False)  # token id -> its row, -1 for a token that is not usable

    def __post_init__(self) -> None:
        self.rows = torch.full((int(self.neighbours.max()) + 1,), -1, dtype=torch.long)
        self.rows[self.tokens] = torch.arange(len(self.tokens))

    @classmethod
    def build(cls, embeddings: torch.Tensor, tokens: torch.Tensor, k: int = 64, chunk: int = 1024) -> CandidateTable:
        """Nearest neighbours by Euclidean distance, in chunks (never an n x n matrix in memory at once), on the
        embeddings' device; the table itself is kept on the CPU."""
        vectors = embeddings[tokens.to(embeddings.device)].float()
        k = min(k, len(tokens))
        neighbours, scores = [], []
        for start in range(0, len(tokens), chunk):
            distances = torch.cdist(vectors[start:start + chunk], vectors)
            nearest, index = (part.cpu() for part in distances.topk(k, dim=1, largest=False))
            largest = nearest[:, -1:].clamp(min=1e-12)
            neighbours.append(tokens[index])
            scores.append(1 - nearest / largest)
        return cls(tokens, torch.cat(neighbours), torch.cat(scores))

    def save(self, path: Path, tag: str = "") -> None:
        """Write the table (safetensors, atomically); ``tag`` names what it was built from."""
        tensors = {"tokens": self.tokens, "neighbours": self.neighbours.contiguous(), "scores": self.scores}
        atomic_write_bytes(path, save(tensors, metadata={"format": TABLE_FORMAT, "tag": tag}))

    @classmethod
    def load(cls, path: Path, tag: str = "") -> CandidateTable:
        """A table :meth:`save` wrote (tensors only: loading runs no code); one for another ``tag`` is refused."""
        with safe_open(path, "pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != TABLE_FORMAT or metadata.get("tag") != tag:
                raise ValueError(f"candidate table {path}: built for {metadata.get('tag')!r}, not {tag!r}")
            return cls(*(handle.get_tensor(name) for name in ("tokens", "neighbours", "scores")))

    def row(self, token: int) -> int | None:
        row = int(self.rows[token]) if 0 <= token < len(self.rows) else -1
        return row if row >= 0 else None

    def probabilities(self, token: int, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The exponential mechanism's distribution over ``token``'s candidates: (candidate ids, probabilities)."""
        row = self.row(token)
        if row is None:
            raise ValueError(f"token {token} is not a usable token (special, or no letter or digit)")
        logits = epsilon * self.scores[row].double() / 2
        return self.neighbours[row], torch.softmax(logits, dim=0)

    def perturb(self, ids: list[int], epsilon: float, generator: torch.Generator) -> list[int]:
        """Each usable token replaced by a draw of the mechanism; other tokens (special, punctuation) kept."""
        check_epsilon(epsilon)
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

    def inversion(self, epsilon: float) -> dict[int, int]:
        """The attacker's best guess of the true token behind each token a draw can produce: the maximum-likelihood
        one, argmax over usable ``t`` of P(draw | t) (nearest-neighbour inversion that knows the mechanism; ties go
        to the drawn token itself)."""
        if math.isinf(epsilon):
            return {int(t): int(t) for t in self.tokens}
        probabilities = torch.softmax(epsilon * self.scores.double() / 2, dim=1).flatten()
        observed = self.neighbours.flatten()
        origin = self.tokens.repeat_interleave(self.neighbours.shape[1])
        order = torch.argsort((origin == observed).double(), descending=True, stable=True)
        order = order[torch.argsort(probabilities[order], descending=True, stable=True)]
        order = order[torch.argsort(observed[order], stable=True)]
        first = torch.ones(len(order), dtype=torch.bool)
        first[1:] = observed[order][1:] != observed[order][:-1]
        best = order[first]
        return dict(zip(observed[best].tolist(), origin[best].tolist(), strict=True))


def candidate_table(model: nn.Module, tokenizer: PreTrainedTokenizerBase, k: int = 64,
                    directory: Path | None = None) -> CandidateTable:
    """``model``'s candidate table, built once and cached under ``directory`` (default ``<fedlit cache>/candidates``),
    keyed by the model's fingerprint, the usable tokens and ``k``: building it is a nearest-neighbour search over the
    whole vocabulary (about a minute for SmolLM2 on 2 CPU cores), reading it back milliseconds."""
    tokens = usable_tokens(tokenizer)
    digest = hashlib.sha256(model_fingerprint(model).encode() + tokens.numpy().tobytes()).hexdigest()[:32]
    tag = f"{digest}-k{k}"
    path = (directory or cache_dir() / "candidates") / f"{tag}.safetensors"
    if path.is_file():
        return CandidateTable.load(path, tag)
    log.info("building the candidate table (%d usable tokens, k=%d) into %s", len(tokens), k, path)
    table = CandidateTable.build(model.get_input_embeddings().weight.detach(), tokens, k)
    table.save(path, tag)
    return table
