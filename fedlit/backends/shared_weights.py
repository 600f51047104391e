"""One copy of a frozen base per machine on Ray: its weights travel as numpy arrays, which Ray keeps in the node's
shared object store and hands every worker of the node as read-only views (zero-copy), instead of a private copy
per worker; the driver's own parameters then point at the same copy. Trainable parameters (adapters, blocks tuned
in full), small tensors and GPU tensors are copied as before: only what is never written is shared."""

from __future__ import annotations

import warnings
from typing import Any

import torch

# below this a tensor is copied: sharing saves nothing worth a mapping
MIN_SHARED_BYTES = 1 << 16
# dtypes numpy lacks travel as same-width integers
_CARRIERS = {torch.bfloat16: torch.int16, torch.float8_e4m3fn: torch.uint8, torch.float8_e5m2: torch.uint8}
# while put_shared runs: the parameters serialised as shared, then their views deserialised here, in the same order
_serialised: list[torch.nn.Parameter] | None = None
_deserialised: list[torch.nn.Parameter] | None = None


def put_shared(ray: Any, value: Any) -> Any:
    """``ray.put(value)``, every frozen CPU ``torch.nn.Parameter`` in it serialised as a shared array (the
    deserialiser is pickled with it, so workers need no registration of their own); this process's own frozen
    parameters are then repointed at the object store's copy, and their private memory freed."""
    global _serialised, _deserialised
    ray.util.register_serializer(torch.nn.Parameter, serializer=_to_shared, deserializer=_from_shared)
    _serialised = []
    try:
        ref = ray.put(value)
        originals, _serialised, _deserialised = _serialised, None, []
        ray.get(ref)
        views = _deserialised
    finally:
        _serialised = _deserialised = None
    for original, view in zip(originals, views, strict=True):
        if not original.requires_grad:  # (a trainable one keeps its own memory: it is written)
            original.data = view.data
    return ref


def _to_shared(param: torch.nn.Parameter) -> tuple[str, Any, Any]:
    data = param.detach()
    if _serialised is not None:  # (all of them: a small one may view the same loaded buffer as a shared one)
        _serialised.append(param)
    if param.requires_grad or data.device.type != "cpu" or data.nbytes < MIN_SHARED_BYTES:
        return "copy", data.clone(), param.requires_grad
    carrier = _CARRIERS.get(data.dtype)
    return "shared", (data.view(carrier) if carrier is not None else data).numpy(), str(data.dtype)


def _from_shared(state: tuple[str, Any, Any]) -> torch.nn.Parameter:
    kind, data, extra = state
    if kind == "copy":
        param = torch.nn.Parameter(data, requires_grad=extra)
        if _deserialised is not None:
            _deserialised.append(param)
        return param
    with warnings.catch_warnings():  # read-only on purpose: a frozen weight is never written
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(data)
    dtype = getattr(torch, extra.removeprefix("torch."))
    param = torch.nn.Parameter(tensor.view(dtype) if tensor.dtype != dtype else tensor, requires_grad=False)
    if _deserialised is not None:
        _deserialised.append(param)
    return param
