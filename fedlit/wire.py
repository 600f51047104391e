"""Dataclasses as plain msgpack bytes, for whatever crosses a process or a network: decoding builds only the
dataclasses a caller names, so bytes from a peer can never make the receiver run code (no pickle)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {"kind": type(value).__name__, **{f.name: _plain(getattr(value, f.name))
                                                   for f in dataclasses.fields(value)}}
    if isinstance(value, np.ndarray):
        return {"kind": "ndarray", "dtype": value.dtype.str, "shape": list(value.shape), "data": value.tobytes()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _typed(value: Any, kinds: Mapping[str, type], what: str) -> Any:
    if isinstance(value, list):
        return [_typed(v, kinds, what) for v in value]
    if not isinstance(value, dict):
        return value
    kind = value.get("kind")
    if kind == "ndarray":
        return np.frombuffer(value["data"], dtype=np.dtype(value["dtype"])).reshape(value["shape"])
    fields = {k: _typed(v, kinds, what) for k, v in value.items() if k != "kind"}
    if kind is None:
        return fields
    if kind not in kinds:
        raise ValueError(f"unknown {what} kind {kind!r}")
    cls = kinds[kind]
    expected = {f.name for f in dataclasses.fields(cls)}
    if set(fields) != expected:
        raise ValueError(f"malformed {kind}: fields {sorted(fields)}, expected {sorted(expected)}")
    return cls(**fields)


def pack(value: Any) -> bytes:
    """msgpack bytes of dataclasses, dicts, lists, arrays (raw bytes with dtype and shape) and scalars."""
    return msgpack.packb(_plain(value), use_bin_type=True)


def unpack(data: bytes, kinds: Mapping[str, type], what: str) -> Any:
    """What :func:`pack` wrote, building only the dataclasses in ``kinds`` (name -> class); anything else raises
    ValueError naming ``what`` was expected."""
    try:
        plain = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (msgpack.UnpackException, ValueError, TypeError) as error:
        raise ValueError(f"not a {what}: {error}") from None
    return _typed(plain, kinds, what)
