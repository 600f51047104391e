"""What the server does about clients that fail: a deadline on each client's fit and the checks an update must
pass before it may reach the aggregate."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from fedlit.payload import Payload, check_compatible, flatten


@dataclass
class FaultPolicy:
    """How the loop treats failing clients. A client that outlives ``timeout_s``, whose worker dies, or that sends
    an update that fails :func:`update_problem` is excluded from the round, with the reason logged and written
    to metrics.csv; the round is aggregated from at least ``min_clients`` good updates, or skipped with the
    global adapter untouched. A client whose code raises is excluded the same way or stops the run
    (``client_errors``).

    Args:
        timeout_s: wall-clock limit of any one client call: its fit, its evaluation, a protocol stage (``None``:
            none). In-process clients are interrupted by SIGALRM, so the limit applies when the loop runs in the
            main thread of a Unix process.
        min_clients: fewest accepted updates that make a round.
        max_update_norm: exclude an update whose L2 distance from the global adapter is larger
            (``None``: no bound; under client-level DP it defaults to the clipping norm).
        client_errors: what an exception raised by a client's code (its fit, its evaluation, a protocol stage)
            does: ``stop`` the run (one line naming the round, the client and the error; the checkpoints stay,
            ``--resume`` continues) or ``exclude`` the client as a fault. ``None``: ``stop`` in a simulation
            (LocalBackend, RayBackend: every client runs the same code, so an exception is a bug) and ``exclude``
            in a deployment (Flower: the parties' machines really differ).
    """

    timeout_s: float | None = None
    min_clients: int = 1
    max_update_norm: float | None = None
    client_errors: Literal["stop", "exclude"] | None = None

    def __post_init__(self) -> None:
        if self.min_clients < 1:
            raise ValueError(f"faults.min_clients must be >= 1, got {self.min_clients}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"faults.timeout_s must be > 0, got {self.timeout_s}")


class ClientTimeout(TimeoutError):
    """A client's call ran past the deadline."""


class UnusableUpdate(ValueError):
    """A client's own check refuses what it would send (NaN/Inf values): an excluded fault, like an update the
    server's checks refuse, never a bug that stops the run."""


class ClientError(RuntimeError):
    """A client's code raised and the fault policy stops the run on it (the default in a simulation)."""


@contextlib.contextmanager
def deadline(seconds: float | None, client_id: str, method: str = "fit") -> Iterator[None]:
    """Raise :class:`ClientTimeout` in the body once ``seconds`` have passed (no-op for ``None`` or off the
    main thread, where signals cannot be delivered)."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise ClientTimeout(f"client '{client_id}' did not finish its {method} within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def update_problem(global_payload: Payload, payload: Payload, max_norm: float | None) -> str | None:
    """Why ``payload`` must not be aggregated (wrong tensors, shapes or dtypes, NaN/Inf, too far from the global
    adapter), or ``None`` when it may."""
    try:
        check_compatible(global_payload, payload, "the update")
    except ValueError as error:
        return str(error)
    dtypes = [f"{name}: expected {global_payload[name].dtype}, got {tensor.dtype}"
              for name, tensor in payload.items() if tensor.dtype != global_payload[name].dtype]
    if dtypes:
        return "dtype mismatch " + "; ".join(dtypes[:5])
    bad = [name for name, tensor in payload.items() if not torch.isfinite(tensor).all()]
    if bad:
        return f"non-finite values (NaN/Inf) in {bad[:5]}"
    if max_norm is not None:
        norm = float(np.linalg.norm(flatten(payload) - flatten(global_payload)))
        if norm > max_norm:
            return f"update norm {norm:.4g} exceeds the bound {max_norm:.4g}"
    return None
