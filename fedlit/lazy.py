"""Package attributes that import their module on first use: a process that needs one light part of fedlit (a
Flower SuperNode answering a secure-aggregation stage) does not pay for torch, Lightning and transformers."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` resolving each name in ``exports`` (name -> module) when first read."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
