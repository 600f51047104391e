"""LoRA factor pairs in a payload, and the rank arithmetic of heterogeneous-rank aggregation: truncation to the
first r components, HetLoRA-style zero-padded averaging with per-component weights, and FlexLoRA-style SVD of the
averaged product, computed from the factors without forming the full ``out x in`` matrix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

A, B = "lora_A", "lora_B"


def lora_pairs(names: Sequence[str]) -> dict[str, str]:
    """Each LoRA ``A`` factor's name -> its ``B`` factor's name (peft names them ``...lora_A.<adapter>.weight``)."""
    pairs = {name: name.replace(f".{A}.", f".{B}.") for name in names if f".{A}." in name}
    missing = sorted(b for b in pairs.values() if b not in names)
    if missing:
        raise ValueError(f"LoRA factors without their pair: {missing[:3]}")
    return pairs


def truncated(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` [r, in] and ``B`` [out, r] with every component from ``rank`` on set to zero (same shapes)."""
    a, b = a.clone(), b.clone()
    a[rank:] = 0
    b[:, rank:] = 0
    return a, b


def padded_average(factors: Sequence[torch.Tensor], ranks: Sequence[int], weights: Sequence[float],
                   previous: torch.Tensor, component_dim: int) -> torch.Tensor:
    """HetLoRA-style: each component (row of ``A``: ``component_dim`` 0; column of ``B``: 1) averaged over the
    clients whose rank includes it, by their weights; a component no client of the round has keeps ``previous``."""
    total = torch.zeros(previous.shape, dtype=torch.float64)
    mass = torch.zeros(previous.shape[component_dim], dtype=torch.float64)
    for factor, rank, weight in zip(factors, ranks, weights, strict=True):
        total += factor.to(torch.float64) * weight
        mass[:rank] += weight
    shape = [1, 1]
    shape[component_dim] = -1
    held = (mass > 0).view(shape)
    averaged = torch.where(held, total / mass.clamp(min=1e-300).view(shape), previous.to(torch.float64))
    return averaged.to(previous.dtype)


def svd_redistributed(a_factors: Sequence[torch.Tensor], b_factors: Sequence[torch.Tensor],
                      weights: Sequence[float], rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FlexLoRA-style: the weighted mean of the products ``B_i A_i``, factored back at ``rank`` by its SVD (the best
    rank-``rank`` approximation), ``B = U sqrt(S)`` and ``A = sqrt(S) V^T`` (components in order of singular value,
    so truncating to the first r is again the best rank-r approximation). The mean is ``[B_1 .. B_n] diag(w)
    [A_1; ..; A_n]``: its SVD comes from two thin QRs and the SVD of a small core, never the ``out x in`` matrix."""
    total = float(sum(weights))
    stacked_b = torch.cat([b.to(torch.float64) * (w / total) for b, w in zip(b_factors, weights, strict=True)], 1)
    stacked_a = torch.cat([a.to(torch.float64) for a in a_factors], 0)
    q_b, r_b = torch.linalg.qr(stacked_b)
    q_a, r_a = torch.linalg.qr(stacked_a.T)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T)
    keep = min(rank, len(s))
    root = s[:keep].sqrt()
    b = torch.zeros(stacked_b.shape[0], rank, dtype=torch.float64)
    a = torch.zeros(rank, stacked_a.shape[1], dtype=torch.float64)
    b[:, :keep] = (q_b @ u[:, :keep]) * root
    a[:keep] = root[:, None] * (vh[:keep] @ q_a.T)
    return a.to(a_factors[0].dtype), b.to(b_factors[0].dtype)


def max_rank(payload: Mapping[str, torch.Tensor]) -> int:
    """The adapter's LoRA rank (the rows of its ``A`` factors); a payload without LoRA factors is an error."""
    ranks = {payload[name].shape[0] for name in lora_pairs(list(payload))}
    if not ranks:
        raise ValueError("heterogeneous LoRA ranks need a LoRA adapter (peft.LoraConfig): this one has no lora_A "
                         "factors")
    if len(ranks) > 1:
        raise ValueError(f"heterogeneous LoRA ranks need one rank for every module, found {sorted(ranks)} "
                         "(rank_pattern)")
    return ranks.pop()
