"""A party's long-lived model host: a Ray actor on the party's own Ray instance (``ray start --head`` on the party's
machine), so that its base model loads once per run rather than once per Flower message.

Flower runs each message's ClientApp in a fresh process; a fit or an evaluation there would import torch and load
the party's base model and data every time. With ``model-host`` in its node config, that process only forwards the
message to a detached actor named after the party, which builds the party's client once per run (the cache of
:func:`~fedlit.flower.party_client.answer_with_client`) and answers every fit, evaluation and ``describe``. The
actor runs on the party's machine, under the party's operator: the party's secure-aggregation state still lives in
its SuperNode's context (passed with each message, returned after it); its residuals, personal state, watermark
keys and secret stay in its state directory. A crash of the actor fails that message as the party's fault (the
server excludes it, named) and Ray restarts the actor, which builds the client again on the next message.
"""

from __future__ import annotations

import logging
import os
from typing import Any

NAMESPACE = "fedlit-party"


class PartyHost:
    """The actor: one party's client, built on first use and kept for the run. ``threads``: torch's intra-op
    threads (Ray would give an actor one): as many as a plain process on the machine uses, so that a hosted fit
    computes what the same fit in a fresh process computes, bit for bit."""

    def __init__(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)

    def ready(self) -> int:
        """Nothing but that the actor is alive (its process id)."""
        return os.getpid()

    def answer(self, build: tuple, method: str, payload: Any, state: bytes | None) -> tuple[Any, bytes | None]:
        from fedlit.flower.party_client import answer_with_client

        return answer_with_client(build, method, payload, state)


def hosted_answer(address: str, threads: int, build: tuple, method: str, payload: Any,
                  state: bytes | None) -> tuple[Any, bytes | None]:
    """``method`` answered by the party's actor on its Ray instance at ``address`` (started on first use, with
    ``threads`` torch threads). The instance is expected to require Ray's token authentication (``ray start``'s
    default): this process presents the party's token (``~/.ray/auth_token``) unless ``RAY_AUTH_MODE`` says
    otherwise."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if not ray.is_initialized():
        ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING, log_to_driver=False)
    client_id = build[0]
    host = ray.remote(PartyHost).options(name=f"party-{client_id}", lifetime="detached", get_if_exists=True,
                                         num_cpus=0, max_restarts=-1, max_task_retries=0)
    actor = host.remote(threads)
    # (after a crash, Ray restarts the actor: a message sent meanwhile would fail as "unavailable"; waiting on a
    # call that is safe to repeat lets the next message reach the restarted host, while the message itself is never
    # repeated: it may have run)
    ray.get(actor.ready.options(max_task_retries=-1).remote())
    return ray.get(actor.answer.remote(build, method, payload, state))
