"""LoRA factor pairs in a payload, and the rank arithmetic of heterogeneous-rank aggregation: a client's share (the
first r components) and its zero padding back to the global rank, HetLoRA-style zero-padded averaging with
per-component weights, and FlexLoRA-style SVD of the averaged product, computed from the factors without forming the
full ``out x in`` matrix."""

from __future__ import annotations

from collections import OrderedDict
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


def component_dims(names: Sequence[str]) -> dict[str, int]:
    """Each LoRA factor's name -> the dimension that indexes its rank components (``A``: 0, ``B``: 1)."""
    return {name: dim for a, b in lora_pairs(names).items() for name, dim in ((a, 0), (b, 1))}


def share_of_rank(payload: Mapping[str, torch.Tensor], rank: int) -> OrderedDict[str, torch.Tensor]:
    """``payload`` with each LoRA pair cut to its first ``rank`` components (``A[:rank]``, ``B[:, :rank]``); every
    other tensor as it is."""
    dims = component_dims(list(payload))
    return OrderedDict((name, tensor.narrow(dims[name], 0, rank).contiguous() if name in dims else tensor)
                       for name, tensor in payload.items())


def padded_to(payload: Mapping[str, torch.Tensor], rank: int) -> OrderedDict[str, torch.Tensor]:
    """``payload``'s LoRA factors zero-padded to ``rank`` components (those a share does not have are zero);
    every other tensor as it is."""
    dims, padded = component_dims(list(payload)), OrderedDict()
    for name, tensor in payload.items():
        if name not in dims or tensor.shape[dims[name]] == rank:
            padded[name] = tensor
            continue
        shape = list(tensor.shape)
        shape[dims[name]] = rank
        padded[name] = torch.zeros(shape, dtype=tensor.dtype)
        padded[name].narrow(dims[name], 0, tensor.shape[dims[name]]).copy_(tensor)
    return padded


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
