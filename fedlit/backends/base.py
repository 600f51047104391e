"""The seam where data crosses between the server and its clients.

The loop (and the secure-aggregation workflow) only ever hand a backend per-client requests and get back
per-client replies or failures: what a request is (the global adapter and a client's plan for its fit, a
protocol message as bytes) never changes with where the clients run. A backend decides that: in this process
one after another (:class:`~fedlit.backends.LocalBackend`), on a pool of Ray actors, or on Flower SuperNodes.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedlit.faults import deadline
from fedlit.privacy.example_dp import ExampleDPConfig


@dataclass
class FitIns:
    """What the server sends one client for one fit: the global adapter (safetensors bytes) and its plan.

    Args:
        global_wire: the global adapter.
        seed: seeds the client's fit (from seed, round and client id, so any backend computes the same).
        clip_norm: client-level DP: clip the update to this L2 norm (``None``: no clipping).
        noise_std: client-level DP under masking: the client's share of the noise.
        example_dp: DP-SGD settings for the local training (``None``: plain training).
        example_dp_steps: DP-SGD steps the client has taken in earlier rounds (its epsilon so far counts them).
        masked: secure aggregation: send the update masked (the client's protocol state must be set up).
    """

    global_wire: bytes
    seed: int
    clip_norm: float | None = None
    noise_std: float = 0.0
    example_dp: ExampleDPConfig | None = None
    example_dp_steps: int = 0
    masked: bool = False


@dataclass
class FitRes:
    """One client's answer to :class:`FitIns`: its update as bytes (safetensors, or an encoded masked input),
    how many examples it trained on (0 when masked: the count travels inside the mask), its metrics and how
    long its fit took."""

    wire: bytes
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class ClientFailure:
    """A client that did not answer: it raised, ran past the deadline, or its worker died."""

    reason: str
    seconds: float = 0.0


Reply = Any  # a ClientApp method's return value (FitRes, or bytes for protocol messages)
ClientAppFactory = Callable[[str], Any]  # client id -> its ClientApp


class ClientHost:
    """Where clients run (a process, a worker): builds each client's app on first use and keeps it, so its
    protocol state lasts across a round's stages, and answers requests with the app's reply or, whatever went
    wrong, a :class:`ClientFailure` (a client's failure is its own, never the round's or the host's).

    Args:
        app_factory: client id -> its ClientApp.
        timeout_s: a fit past it is interrupted by SIGALRM (main thread of a Unix process); ``None``: no limit.
    """

    def __init__(self, app_factory: ClientAppFactory, timeout_s: float | None = None) -> None:
        self.app_factory, self.timeout_s = app_factory, timeout_s
        self.apps: dict[str, Any] = {}

    def answer(self, method: str, client_id: str, request: Any) -> Reply | ClientFailure:
        """``app.<method>(request)`` for ``client_id``."""
        began = time.perf_counter()
        try:
            app = self.apps.get(client_id) or self.apps.setdefault(client_id, self.app_factory(client_id))
            with deadline(self.timeout_s if method == "fit" else None, client_id):
                return getattr(app, method)(request)
        except Exception as error:  # noqa: BLE001 - any failure is that client's
            return ClientFailure(f"{type(error).__name__}: {error}", round(time.perf_counter() - began, 3))


class Backend(ABC):
    """Runs the server's requests on the clients.

    ``start`` gets a factory of client apps (it may be called where the clients live, once per client);
    ``call`` sends each listed client its request for a :class:`~fedlit.client.ClientApp` method and returns
    each client's reply or :class:`ClientFailure`. A client's app, and so its protocol state, lives with the
    backend's worker for that client: it never comes back to the caller.
    """

    @abstractmethod
    def start(self, app_factory: ClientAppFactory, timeout_s: float | None) -> None:
        """Prepare to run clients built by ``app_factory``; ``timeout_s`` bounds each client's fit."""

    @abstractmethod
    def call(self, method: str, requests: Mapping[str, Any],
             on_reply: Callable[[str], None] | None = None) -> dict[str, Reply | ClientFailure]:
        """``app.<method>(request)`` for every client id in ``requests``; ``on_reply(client_id)`` as each
        answers (progress)."""

    def close(self) -> None:  # noqa: B027 - optional: a backend without workers has nothing to release
        """Release workers (the loop calls it when a run ends)."""
