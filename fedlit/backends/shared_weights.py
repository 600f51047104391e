"""One copy of a frozen base per machine on Ray: each frozen weight goes into the node's shared object store on its
own, the driver's parameter is repointed at that copy at once (its private memory freed before the next weight is
copied, so the driver never holds the base twice), and every worker of the node maps the same copy as read-only
views (zero-copy) instead of unpickling a private one. Trainable parameters (adapters, blocks tuned in full), small
tensors and GPU tensors are copied as before: only what is never written is shared."""

from __future__ import annotations

import ctypes
import mmap
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import torch

# below this a tensor is copied: sharing saves nothing worth a mapping
MIN_SHARED_BYTES = 1 << 16
# dtypes numpy lacks travel as same-width integers
_CARRIERS = {torch.bfloat16: torch.int16, torch.float8_e4m3fn: torch.uint8, torch.float8_e5m2: torch.uint8}
# while put_shared serialises: id of a shared parameter -> its index; while SharedValue.get deserialises: the views
_index: dict[int, int] | None = None
_views: list[Any] | None = None


@dataclass
class SharedValue:
    """A value in Ray's object store whose frozen weights are separate objects there; ``get`` rebuilds it with each
    weight a view of the node's one copy."""

    value: Any  # ObjectRef of the value, its frozen weights as placeholders
    weights: list[Any]  # ObjectRef of each frozen weight (a numpy array), by placeholder index

    def get(self, ray: Any) -> Any:
        global _views
        _views = ray.get(self.weights)
        try:
            return ray.get(self.value)
        finally:
            _views = None


def put_shared(ray: Any, value: Any) -> SharedValue:
    """Put ``value`` into Ray's object store, its frozen CPU parameters shared (this process's repointed at them)."""
    global _index
    frozen, small = _frozen_parameters(ray, value)
    for param in small:  # its own memory: a small weight may view the buffer the shared ones were loaded into
        param.data = param.detach().clone()
    weights = []
    mapped = _file_mappings() if sys.platform == "linux" else []
    for param in frozen:
        data = param.detach()
        carrier = _CARRIERS.get(data.dtype)
        ref = ray.put((data.view(carrier) if carrier is not None else data).numpy())
        param.data = _tensor(ray.get(ref), data.dtype)  # this process's private copy of the weight is freed here
        _drop_file_pages(data, mapped)  # (or, read from a mapped checkpoint, its pages leave this process)
        weights.append(ref)
    ray.util.register_serializer(torch.nn.Parameter, serializer=_serialise, deserializer=_deserialise)
    _index = {id(param): i for i, param in enumerate(frozen)}
    try:
        return SharedValue(ray.put(value), weights)
    finally:
        _index = None


def _file_mappings() -> list[tuple[int, int]]:
    """The address ranges of this process that map a file read-only or privately (a checkpoint loaded with mmap)."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            if len(parts) >= 6 and parts[5].startswith("/") and not parts[5].startswith("/dev/") and parts[1][3] == "p":
                low, high = (int(x, 16) for x in parts[0].split("-"))
                ranges.append((low, high))
    return ranges


def _drop_file_pages(tensor: torch.Tensor, mapped: list[tuple[int, int]]) -> None:
    """A weight that lies in a file mapping (transformers maps safetensors checkpoints) keeps its pages resident in
    this process until the whole file is unmapped, i.e. until the last weight is shared: the driver would hold the
    base twice for a moment. Its whole pages are dropped now (MADV_DONTNEED: clean file pages, re-read from the
    file if ever touched again). Linux only; elsewhere nothing is done."""
    start, end = tensor.data_ptr(), tensor.data_ptr() + tensor.nbytes
    if not any(low <= start and end <= high for low, high in mapped):
        return
    page = mmap.PAGESIZE
    first, last = -(-start // page) * page, end // page * page
    if last > first:
        ctypes.CDLL(None, use_errno=True).madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first),
                                                  mmap.MADV_DONTNEED)


def _frozen_on_cpu(param: torch.nn.Parameter) -> bool:
    return not param.requires_grad and param.device.type == "cpu"


def _shareable(param: torch.nn.Parameter) -> bool:
    return _frozen_on_cpu(param) and param.nbytes >= MIN_SHARED_BYTES


def _frozen_parameters(ray: Any, value: Any) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """The frozen CPU parameters reachable from ``value``, in the order pickling meets them (found by pickling it
    into nothing, their data left out): those to share, and those too small to."""
    found: dict[int, torch.nn.Parameter] = {}

    class Finder(ray.cloudpickle.CloudPickler):
        def reducer_override(self, obj: Any) -> Any:
            if type(obj) is torch.nn.Parameter:
                if _frozen_on_cpu(obj):
                    found.setdefault(id(obj), obj)
                return tuple, ()
            return super().reducer_override(obj)

    class Nowhere:
        def write(self, data: bytes) -> int:
            return len(data)

    Finder(Nowhere()).dump(value)
    return [p for p in found.values() if _shareable(p)], [p for p in found.values() if not _shareable(p)]


def _serialise(param: torch.nn.Parameter) -> tuple[str, Any, Any]:
    index = None if _index is None else _index.get(id(param))
    if index is None:
        return "copy", param.detach().clone(), param.requires_grad
    return "shared", index, str(param.dtype)


def _deserialise(state: tuple[str, Any, Any]) -> torch.nn.Parameter:
    kind, data, extra = state
    if kind == "copy":
        return torch.nn.Parameter(data, requires_grad=extra)
    if _views is None:
        raise RuntimeError("a shared frozen weight is rebuilt only through SharedValue.get")
    return torch.nn.Parameter(_tensor(_views[data], getattr(torch, extra.removeprefix("torch."))),
                              requires_grad=False)


def _tensor(array: Any, dtype: torch.dtype) -> torch.Tensor:
    """``array`` (read-only, in the object store) as a tensor of ``dtype``, sharing its memory."""
    with warnings.catch_warnings():  # read-only on purpose: a frozen weight is never written
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(array)
    return tensor.view(dtype) if tensor.dtype != dtype else tensor
