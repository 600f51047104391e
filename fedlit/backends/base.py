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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedlit.backends.messages import ClientFailure
from fedlit.faults import ClientError, ClientTimeout, UnusableUpdate, deadline

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from fedlit.data.federated import DataConfig, FederatedData


Reply = Any  # a ClientApp method's return value (FitRes, or bytes for protocol messages)
ClientAppFactory = Callable[[str], Any]  # client id -> its ClientApp


class ClientHost:
    """Where clients run (a process, a worker): builds each client's app on first use and keeps it, so its
    protocol state lasts across a round's stages, and answers requests with the app's reply or, whatever went
    wrong, a :class:`ClientFailure` (a client's failure is its own, never the round's or the host's).

    Args:
        app_factory: client id -> its ClientApp.
        timeout_s: any call (a fit, an evaluation, a protocol stage) past it is interrupted by SIGALRM (main thread
            of a Unix process); ``None``: no limit.
    """

    def __init__(self, app_factory: ClientAppFactory, timeout_s: float | None = None) -> None:
        self.app_factory, self.timeout_s = app_factory, timeout_s
        self.apps: dict[str, Any] = {}

    def answer(self, method: str, client_id: str, request: Any) -> Reply | ClientFailure:
        """``app.<method>(request)`` for ``client_id``."""
        began = time.perf_counter()
        try:
            app = self.apps.get(client_id) or self.apps.setdefault(client_id, self.app_factory(client_id))
            with deadline(self.timeout_s, client_id, method):
                return getattr(app, method)(request)
        except (ClientTimeout, UnusableUpdate) as error:  # faults, whatever the policy says of exceptions
            return ClientFailure(f"{type(error).__name__}: {error}", round(time.perf_counter() - began, 3))
        except Exception as error:  # noqa: BLE001 - the backend decides what a client's exception means
            return ClientFailure(f"{type(error).__name__}: {error}", round(time.perf_counter() - began, 3), raised=True)


class Backend(ABC):
    """Runs the server's requests on the clients.

    ``start`` gets a factory of client apps (it may be called where the clients live, once per client);
    ``call`` sends each listed client its request for a :class:`~fedlit.client.ClientApp` method and returns
    each client's reply or :class:`ClientFailure`. A client's app, and so its protocol state, lives with the
    backend's worker for that client: it never comes back to the caller.
    """

    simulation = True  # every client runs the same code here: an exception in it is a bug (FaultPolicy.client_errors)
    sees_every_client = True  # federated_data makes every client of the federation (a party makes only its own)
    stop_on_errors = True

    @abstractmethod
    def start(self, app_factory: ClientAppFactory, timeout_s: float | None) -> None:
        """Prepare to run clients built by ``app_factory``; ``timeout_s`` bounds each client's every call."""

    def on_client_errors(self, client_errors: str | None) -> None:
        """Whether an exception in a client's code stops the run (``stop``) or excludes that client (``exclude``);
        ``None``: stop in a simulation, exclude in a deployment."""
        self.stop_on_errors = client_errors == "stop" or (client_errors is None and self.simulation)

    def checked(self, method: str, replies: dict[str, Reply | ClientFailure]) -> dict[str, Reply | ClientFailure]:
        """``replies``, unless a client's code raised and the run stops on that: then :class:`ClientError`."""
        for client_id, reply in replies.items():
            if self.stop_on_errors and isinstance(reply, ClientFailure) and reply.raised:
                raise ClientError(f"client '{client_id}' raised in its {method}: {reply.reason} (a bug in client "
                                  "code stops a simulation; faults.client_errors: exclude treats it as a fault)")
        return replies

    @abstractmethod
    def call(self, method: str, requests: Mapping[str, Any],
             on_reply: Callable[[str], None] | None = None) -> dict[str, Reply | ClientFailure]:
        """``app.<method>(request)`` for every client id in ``requests``; ``on_reply(client_id)`` as each
        answers (progress)."""

    def federated_data(self, config: DataConfig, tokenizer: PreTrainedTokenizerBase) -> FederatedData:
        """The federation's clients and held-out data as the server knows them: here, every client's data is
        read in this process from ``config`` (a deployment backend asks its parties instead)."""
        from fedlit.data.federated import build_federated_data

        return build_federated_data(config, tokenizer)

    def client_package(self, directory: Path, build: Callable[[Path], None]) -> Path:
        """The model package every client trains on (FedOST's emulator), which only the server can make: built
        here into ``directory``, where clients load it (a deployment backend also sends it to the parties; on a
        party, the received one is returned and nothing is built)."""
        build(directory)
        return directory

    def close(self) -> None:  # noqa: B027 - optional: a backend without workers has nothing to release
        """Release workers (the loop calls it when a run ends)."""
