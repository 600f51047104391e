"""No code from a model hub runs unless the config asks for it.

transformers 5 fetches and executes compute kernels from the Hub (``kernels-community/...``) by default when the
``kernels`` package is installed, and bitsandbytes' CPU backend fetches one when it is imported. A framework that
keeps each party's data to itself must not run code it did not ship: fedlit turns both off in every process that
loads a model (the CLI, LocalBackend's process, each Ray worker, each Flower party) unless ``model.hub_code: true``.
Offline this also keeps runs from failing on kernels that are not in the local cache.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

# transformers' own switch (read when a kernel would load); fedlit's, so that a process started by this one (a Ray
# worker) applies the same policy before it imports anything that could fetch a kernel
TRANSFORMERS_SWITCH, FEDLIT_SWITCH = "USE_HUB_KERNELS", "FEDLIT_HUB_CODE"
# the ``kernels`` package's entry points that download or load a kernel from the Hub
_FETCHERS = ("get_kernel", "get_locked_kernel", "load_kernel", "install_kernel", "get_kernel_dep")
_originals: dict[str, Callable[..., Any]] = {}


class HubCodeRefused(RuntimeError):
    """Something asked for code from the Hub while ``model.hub_code`` is off."""


def hub_code_env(allowed: bool) -> dict[str, str]:
    """The environment variables that carry the policy to a child process."""
    return {TRANSFORMERS_SWITCH: "YES" if allowed else "NO", FEDLIT_SWITCH: "1" if allowed else "0"}


def apply_hub_code_policy(allowed: bool) -> None:
    """Allow or forbid Hub code in this process (and the processes it starts): transformers' switch, and the
    ``kernels`` package's fetchers replaced by a refusal (bitsandbytes calls them directly)."""
    os.environ.update(hub_code_env(allowed))
    if importlib.util.find_spec("kernels") is None:
        return
    import kernels

    for name in _FETCHERS:
        current = getattr(kernels, name, None)
        if current is None:
            continue
        original = _originals.setdefault(name, current)
        setattr(kernels, name, original if allowed else _refusal(name))


def apply_inherited_policy() -> None:
    """The policy of the process that started this one (off when it set none)."""
    apply_hub_code_policy(os.environ.get(FEDLIT_SWITCH) == "1")


def hub_code_allowed() -> bool:
    """This process's policy: transformers' own check, and the ``kernels`` fetchers not refused."""
    from transformers.integrations.hub_kernels import _kernels_enabled

    if importlib.util.find_spec("kernels") is None:
        return _kernels_enabled()
    import kernels

    return _kernels_enabled() and not getattr(kernels.get_kernel, "refuses_hub_code", False)


def _refusal(name: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        what = args[0] if args else kwargs.get("repo_id", "a kernel")
        raise HubCodeRefused(f"kernels.{name}({what!r}): code from the Hub is off in fedlit (model.hub_code: false)")

    refuse.refuses_hub_code = True  # type: ignore[attr-defined]
    return refuse
