"""What crosses between the server and a client for a fit, as plain dataclasses (no torch): they travel as
Python objects in-process, as Ray objects, or as msgpack bytes over Flower (:mod:`fedlit.wire`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FitIns:
    """What the server sends one client for one fit: the global adapter (safetensors bytes) and each client mod's
    settings.

    Args:
        global_wire: the global adapter, or this client's share of it (``Strategy.fit_payload``).
        seed: seeds the client's fit (from seed, round and client id, so any backend computes the same); the server
            chose it, so nothing that protects the client is drawn from it (that comes from the client's own secret).
        server_round: the round this fit belongs to.
        run_id: the run's id (stable across resumes): a client keeps its state between rounds under it.
        mods: settings by client mod name (plain data: numbers, strings, lists, mappings), set by the server side (a
            strategy wrapper's ``fit_plan``, the federation, the round workflow); a mod absent here does not run
            unless the client's own settings ask for it (:mod:`fedlit.client.mods`).
    """

    global_wire: bytes
    seed: int
    server_round: int = 0
    run_id: str = ""
    mods: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class FitRes:
    """One client's answer to :class:`FitIns`: its update as bytes (safetensors, or an encoded masked input),
    how many examples it trained on (0 when masked: the count travels inside the mask), its metrics, how long its
    fit took, and what its client mods send back to the server side that asked for them (``mods``: plain data by
    mod name, as in :attr:`FitIns.mods`; SCAFFOLD's control variate change)."""

    wire: bytes
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    mods: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class ClientFailure:
    """A client that did not answer: it raised (``raised``: its own code did), ran past the deadline, or its worker
    died."""

    reason: str
    seconds: float = 0.0
    raised: bool = False


def tensor_bytes(mods: dict[str, dict[str, Any]]) -> int:
    """The bytes client mods' settings or replies carry as tensors (SCAFFOLD's control variates): counted with the
    adapter in a round's traffic."""
    return sum(len(value) for settings in mods.values() for value in settings.values() if isinstance(value, bytes))
