"""What travels between server and clients: an ordered map of trainable tensors, serialised with safetensors."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

Payload = OrderedDict[str, torch.Tensor]


def to_bytes(payload: dict[str, torch.Tensor]) -> bytes:
    """The wire format: safetensors bytes of the (contiguous, CPU) tensors."""
    return save_bytes({name: t.detach().to("cpu").contiguous() for name, t in payload.items()})


def from_bytes(data: bytes) -> Payload:
    """Inverse of :func:`to_bytes`, in sorted key order (as :func:`canonical` produces)."""
    return OrderedDict(sorted(load_bytes(data).items()))


def canonical(payload: dict[str, torch.Tensor]) -> Payload:
    """Detached CPU copies in sorted key order, so that equal payloads compare and serialise equally."""
    return OrderedDict((name, payload[name].detach().to("cpu").clone()) for name in sorted(payload))


def flatten(payload: dict[str, torch.Tensor]) -> np.ndarray:
    """All tensors as one float64 vector, in the payload's order (as secure aggregation masks them)."""
    return np.concatenate([t.detach().to("cpu", torch.float64).flatten().numpy() for t in payload.values()])


def unflatten(vector: np.ndarray, like: Payload) -> Payload:
    """Inverse of :func:`flatten`: tensors shaped and typed as ``like``'s."""
    out, offset = OrderedDict(), 0
    for name, tensor in like.items():
        out[name] = torch.from_numpy(vector[offset: offset + tensor.numel()].copy()).reshape(tensor.shape).to(
            tensor.dtype)
        offset += tensor.numel()
    if offset != len(vector):
        raise ValueError(f"vector of length {len(vector)} does not match a payload of {offset} values")
    return out


def check_compatible(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], who: str) -> None:
    """Raise a ValueError naming every missing, unexpected or mis-shaped tensor of ``got``."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [
        f"{name}: expected {tuple(expected[name].shape)}, got {tuple(got[name].shape)}"
        for name in sorted(set(expected) & set(got))
        if expected[name].shape != got[name].shape
    ]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            problems.append(f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            problems.append("shape mismatch " + "; ".join(shapes[:5]))
        raise ValueError(f"adapter mismatch for {who}: " + ", ".join(problems))


@dataclass
class Update:
    """One client's contribution to a round: its trainable tensors, how many examples they saw, its metrics."""

    client_id: str
    payload: Payload
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
