"""What travels between server and clients: an ordered map of trainable tensors, serialised with safetensors."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

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


# How a tensor with few changed entries travels: its name plus these suffixes (no parameter name has a "#").
CHANGED_INDICES, CHANGED_VALUES = "#changed_indices", "#changed_values"


def changes_to_bytes(payload: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> bytes:
    """An update's wire form given the payload it started from: a tensor whose changed entries are few enough travels
    as their flat indices (int32) and new values, bit-exact (FedKSeed's K coefficients change only at the seeds its
    steps drew: O(steps) bytes), any other tensor whole (a LoRA update changes every entry)."""
    wire = {}
    for name, tensor in payload.items():
        before = start.get(name)
        if before is not None and before.shape == tensor.shape and before.dtype == tensor.dtype:
            flat = tensor.flatten()
            changed = (flat != before.flatten()).nonzero().flatten()
            if len(changed) * (4 + tensor.element_size()) < tensor.numel() * tensor.element_size():
                wire[name + CHANGED_INDICES], wire[name + CHANGED_VALUES] = changed.to(torch.int32), flat[changed]
                continue
        wire[name] = tensor
    return to_bytes(wire)


def changes_from_bytes(data: bytes, start: Payload) -> Payload:
    """Inverse of :func:`changes_to_bytes`; malformed changes (an unknown tensor, indices out of range, values of
    another count or dtype) raise a ValueError naming the tensor."""
    wire, payload = from_bytes(data), OrderedDict()
    for key, tensor in wire.items():
        if key.endswith(CHANGED_VALUES):
            continue
        if not key.endswith(CHANGED_INDICES):
            payload[key] = tensor
            continue
        name = key.removesuffix(CHANGED_INDICES)
        values, before = wire.get(name + CHANGED_VALUES), start.get(name)
        indices = tensor.long()
        if (before is None or values is None or values.shape != indices.shape or values.dtype != before.dtype
                or (len(indices) and not 0 <= int(indices.min()) <= int(indices.max()) < before.numel())):
            raise ValueError(f"the changes sent for tensor '{name}' do not fit the global payload")
        flat = before.flatten().clone()
        flat[indices] = values
        payload[name] = flat.reshape(before.shape)
    return canonical(payload)


def split(payload: Payload, prefix: str) -> tuple[Payload, Payload]:
    """(the tensors whose names start with ``prefix``, the others), each in ``payload``'s order."""
    inside = OrderedDict((n, t) for n, t in payload.items() if n.startswith(prefix))
    return inside, OrderedDict((n, t) for n, t in payload.items() if not n.startswith(prefix))


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
    """One client's contribution to a round: its trainable tensors, how many examples they saw, its metrics, and
    what its client mods sent back by name (for the strategy wrapper that asked: SCAFFOLD's variate change)."""

    client_id: str
    payload: Payload
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    mods: dict[str, dict[str, Any]] = field(default_factory=dict)
