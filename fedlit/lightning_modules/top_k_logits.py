"""What FedMKT's parties exchange instead of weights: each position's k largest logits (values and token ids),
checked before they travel, carried across tokenizers, and distilled from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fedlit.faults import UnusableUpdate
from fedlit.payload import Payload, from_bytes, to_bytes


@dataclass
class TopKLogits:
    """``values`` and ``ids`` of shape [positions, k]: the k largest logits of each position, largest first."""

    values: torch.Tensor
    ids: torch.Tensor

    @classmethod
    def of(cls, logits: torch.Tensor, k: int) -> TopKLogits:
        values, ids = logits.float().topk(k, dim=-1)
        return cls(values, ids)

    def check_finite(self, who: str) -> None:
        """A NaN or infinite logit would poison every party that distils from it (FATE-LLM #144): refused,
        naming ``who`` and how many."""
        bad = int((~torch.isfinite(self.values)).sum())
        if bad:
            raise UnusableUpdate(f"{who}: {bad} of {self.values.numel()} top-k logits are NaN or infinite")

    def to_bytes(self) -> bytes:
        return to_bytes(Payload(ids=self.ids, values=self.values))

    @classmethod
    def from_bytes(cls, data: bytes) -> TopKLogits:
        tensors = from_bytes(data)
        return cls(tensors["values"], tensors["ids"])

    def aligned(self, path: list[tuple[int, int]], positions: int, vocabulary_map: np.ndarray) -> TopKLogits:
        """The same logits on another tokenisation of the text: target position ``j`` takes the logits of the first
        source position paired with it on ``path`` (an :func:`~fedlit.data.token_alignment.align_tokens` path,
        source first), each token id mapped through ``vocabulary_map`` (source id -> target id)."""
        source = {}
        for i, j in path:
            source.setdefault(j, i)
        if len(source) != positions:
            raise ValueError(f"the alignment covers {len(source)} of {positions} target positions")
        rows = torch.tensor([source[j] for j in range(positions)])
        mapped = torch.from_numpy(vocabulary_map)[self.ids[rows]]
        return TopKLogits(self.values[rows], mapped)


def top_k_distillation_loss(student_logits: torch.Tensor, teacher: TopKLogits, temperature: float = 1.0
                            ) -> torch.Tensor:
    """KL(teacher || student) over each position's k teacher tokens, both distributions renormalised over them,
    times temperature^2 (the usual scaling), averaged over positions."""
    target = F.softmax(teacher.values / temperature, dim=-1)
    student = F.log_softmax(student_logits.float().gather(-1, teacher.ids) / temperature, dim=-1)
    return F.kl_div(student, target, reduction="batchmean") * temperature**2
