"""Private inference over the Backend seam: the server calls each client's ``query``, continues what came back
with its model, and calls each client's ``extract`` with the continuations. The clients' apps live where the
backend runs them (this process, Ray workers), so their clear prompts never exist in the server's objects."""

from __future__ import annotations

from collections.abc import Iterable

from fedlit.backends.base import Backend, ClientAppFactory
from fedlit.backends.messages import ClientFailure
from fedlit.inference.generation_server import GenerationServer


def private_inference(backend: Backend, apps: ClientAppFactory, server: GenerationServer,
                      client_ids: Iterable[str]) -> dict[str, dict[str, int] | ClientFailure]:
    """Each client's reply to ``extract`` (how many answers it wrote), or why it failed."""
    backend.start(apps, None)
    try:
        queries = backend.call("query", dict.fromkeys(client_ids))
        failed = {c: q for c, q in queries.items() if isinstance(q, ClientFailure)}
        answers = {c: server.answer(q) for c, q in queries.items() if c not in failed}
        return {**failed, **backend.call("extract", answers)}
    finally:
        backend.close()
