"""LocalBackend: every client in this process, one after another (the default)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from fedlit.backends.base import Backend, ClientAppFactory, ClientFailure, Reply
from fedlit.faults import deadline


class LocalBackend(Backend):
    """Runs each request in this process, in order. Client apps are built on first use and kept, so a client's
    protocol state lasts across a round's stages; all of them share the process's one frozen base model. A
    fit past the deadline is interrupted by SIGALRM (main thread of a Unix process)."""

    def start(self, app_factory: ClientAppFactory, timeout_s: float | None) -> None:
        self.app_factory, self.timeout_s = app_factory, timeout_s
        self.apps: dict[str, Any] = {}

    def call(self, method: str, requests: Mapping[str, Any],
             on_reply: Callable[[str], None] | None = None) -> dict[str, Reply | ClientFailure]:
        replies: dict[str, Reply | ClientFailure] = {}
        for client_id, request in requests.items():
            began = time.perf_counter()
            try:
                app = self.apps.get(client_id) or self.apps.setdefault(client_id, self.app_factory(client_id))
                with deadline(self.timeout_s if method == "fit" else None, client_id):
                    replies[client_id] = getattr(app, method)(request)
            except Exception as error:  # noqa: BLE001 - any client failure is that client's, never the round's
                replies[client_id] = ClientFailure(f"{type(error).__name__}: {error}",
                                                   round(time.perf_counter() - began, 3))
            if on_reply is not None:
                on_reply(client_id)
        return replies
