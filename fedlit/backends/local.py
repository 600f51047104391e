"""LocalBackend: every client in this process, one after another (the default)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fedlit.backends.base import Backend, ClientAppFactory, ClientHost, Reply
from fedlit.backends.messages import ClientFailure


class LocalBackend(Backend):
    """Runs each request in this process, in order, on one :class:`ClientHost`: all clients share the process's
    one frozen base model, and a fit past the deadline is interrupted by SIGALRM."""

    def start(self, app_factory: ClientAppFactory, timeout_s: float | None) -> None:
        self.host = ClientHost(app_factory, timeout_s)

    def call(self, method: str, requests: Mapping[str, Any],
             on_reply: Callable[[str], None] | None = None) -> dict[str, Reply | ClientFailure]:
        replies: dict[str, Reply | ClientFailure] = {}
        for client_id, request in requests.items():
            replies[client_id] = self.host.answer(method, client_id, request)
            if on_reply is not None:
                on_reply(client_id)
        return self.checked(method, replies)
