"""RayBackend: clients run in parallel on a pool of Ray actors; the actors of a node map one shared copy of the
frozen base from Ray's object store (:mod:`fedlit.backends.shared_weights`).

Only requests and replies cross process boundaries: the global adapter and the updates as bytes, protocol
messages as bytes. A client's secure-aggregation state is created in the actor that runs its round setup, and
its later stages (the masked fit, the unmask reply) go to that same actor, so its keys, seeds and shares never
exist in the driver. A fit with no such state goes to whichever actor is free first.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from fedlit.backends.base import Backend, ClientAppFactory, ClientHost, Reply
from fedlit.backends.freed_memory import settle_heap
from fedlit.backends.messages import ClientFailure
from fedlit.backends.shared_weights import SharedValue, put_shared
from fedlit.hub_code import hub_code_allowed, hub_code_env

log = logging.getLogger(__name__)

# Methods that open state a client keeps for the calls after them (a secure-aggregation round's keys, a private
# inference query's perturbed prompts): the client stays on the worker that answered until the next opening.
OPENING_METHODS = frozenset({"secagg_setup", "query"})


class _Worker:
    """One Ray actor: the client-app factory once (its frozen base mapped from the node's shared copy), on a
    :class:`ClientHost` (the driver enforces the deadline: it can replace a stuck worker)."""

    def __init__(self, app_factory: SharedValue, torch_threads: int) -> None:
        import ray
        import torch

        from fedlit.cli import quiet_libraries

        torch.set_num_threads(torch_threads)
        quiet_libraries()
        self.host = ClientHost(app_factory.get(ray))
        settle_heap(freeze=True)

    def call(self, method: str, client_id: str, request: Any) -> Reply | ClientFailure:
        try:
            return self.host.answer(method, client_id, request)
        finally:
            settle_heap()

    def pid(self) -> int:
        import os

        return os.getpid()


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Refuse, in one line and within ``timeout_s``, a ``host:port`` (or ``ray://host:port``) where nothing listens:
    ``ray.init`` would retry it for minutes. ``auto`` is left to Ray, which answers at once."""
    found = re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)", address)
    if found is None:
        return
    try:
        socket.create_connection((found[1], int(found[2])), timeout=timeout_s).close()
    except OSError as error:
        raise ConnectionError(f"backend.address {address}: no Ray cluster answers there "
                              f"({error.strerror or error})") from None


class RayBackend(Backend):
    """A pool of ``num_workers`` Ray actors.

    Args:
        num_workers: actors, i.e. clients training at the same time.
        cpus_per_worker: CPUs Ray reserves for each actor; also its torch thread count (so results match a
            local run with that many threads bit for bit).
        gpus_per_worker: GPUs per actor; a fraction (0.25) lets several actors share one GPU (4 on each). Ray sets
            each actor's ``CUDA_VISIBLE_DEVICES`` to the GPU it was given, which is then its ``cuda:0``.
        address: an existing Ray cluster to join (``auto`` or ``ray://host:port``); ``None`` starts a local one
            sized for the pool.
        gpus: GPUs of the local cluster it starts (default: those Ray detects); logical GPUs let a machine without
            one check the placement.
    """

    def __init__(self, num_workers: int = 2, cpus_per_worker: int = 1, gpus_per_worker: float = 0,
                 address: str | None = None, gpus: float | None = None) -> None:
        if num_workers < 1 or cpus_per_worker < 1 or gpus_per_worker < 0:
            raise ValueError(f"backend: need num_workers >= 1, cpus_per_worker >= 1 and gpus_per_worker >= 0, got "
                             f"{num_workers}, {cpus_per_worker} and {gpus_per_worker}")
        if 1 < gpus_per_worker != int(gpus_per_worker):
            raise ValueError(f"backend.gpus_per_worker {gpus_per_worker}: above 1 it must be a whole number of GPUs")
        self.num_workers, self.cpus_per_worker = num_workers, cpus_per_worker
        self.gpus_per_worker, self.address, self.gpus = gpus_per_worker, address, gpus
        self.workers: list[Any] = []
        self.placement: dict[str, int] = {}  # client -> the worker holding its protocol state this round

    def start(self, app_factory: ClientAppFactory, timeout_s: float | None) -> None:
        try:
            import ray
        except ImportError:
            raise ImportError("the Ray backend needs Ray: pip install 'fedlit[ray]'") from None
        if not ray.is_initialized():
            if self.address:
                check_reachable(self.address)
            local = {} if self.address else {"num_cpus": self.num_workers * self.cpus_per_worker}
            if self.gpus is not None and not self.address:
                local["num_gpus"] = self.gpus
            # "local": a cluster of its own, even where `ray start` left a running one (a party's model host)
            ray.init(address=self.address or "local", include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, **local)
        self.ray, self.timeout_s = ray, timeout_s
        self._check_gpus(ray.cluster_resources().get("GPU", 0.0))
        self.factory = put_shared(ray, app_factory)  # the node's workers and this process: one frozen base
        # the driver's Hub-code policy, in each worker's environment from its start (fedlit applies it on import)
        self.actor_class = ray.remote(_Worker).options(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker,
                                                        max_concurrency=1,
                                                        runtime_env={"env_vars": hub_code_env(hub_code_allowed())})
        self.workers = [self._new_worker() for _ in range(self.num_workers)]
        self.ray.get([worker.pid.remote() for worker in self.workers])  # up: the deadline starts with the call
        self.placement = {}

    def _check_gpus(self, cluster_gpus: float) -> None:
        """Refuse a pool whose actors could never all be placed (Ray would wait for them for ever): an actor's share
        of a GPU is never split across GPUs."""
        share = self.gpus_per_worker
        if share == 0:
            return
        fits = int(cluster_gpus) * int(1 / share) if share <= 1 else int(cluster_gpus // share)
        if self.num_workers > fits:
            raise ValueError(f"backend: {self.num_workers} workers x {share:g} GPU do not fit the Ray cluster's "
                             f"{cluster_gpus:g} GPU(s) ({fits} at most): lower num_workers or gpus_per_worker")

    def _new_worker(self) -> Any:
        return self.actor_class.remote(self.factory, self.cpus_per_worker)

    def _replace(self, index: int) -> None:
        """A worker that died or overran the deadline is killed and replaced; its clients' state is gone."""
        self.ray.kill(self.workers[index], no_restart=True)
        self.workers[index] = self._new_worker()
        self.ray.get(self.workers[index].pid.remote())  # up before it gets a call with a deadline
        self.placement = {cid: w for cid, w in self.placement.items() if w != index}

    def call(self, method: str, requests: Mapping[str, Any],
             on_reply: Callable[[str], None] | None = None) -> dict[str, Reply | ClientFailure]:
        pending = list(requests)
        running: dict[Any, tuple[str, int, float]] = {}  # ref -> (client, worker, started)
        replies: dict[str, Reply | ClientFailure] = {}
        free = set(range(len(self.workers)))
        while pending or running:
            for client_id in list(pending):
                index = self._worker_for(method, client_id, free)
                if index is None:
                    continue
                pending.remove(client_id)
                free.discard(index)
                ref = self.workers[index].call.remote(method, client_id, requests[client_id])
                running[ref] = (client_id, index, time.monotonic())
            if not running:
                continue
            done, _ = self.ray.wait(list(running), num_returns=1, timeout=self._wait_timeout(running))
            for ref in done:
                client_id, index, began = running.pop(ref)
                replies[client_id] = self._result(ref, client_id, index, began)
                free.add(index)
                if on_reply is not None:
                    on_reply(client_id)
            if not done:
                self._expire(method, running, replies, free, on_reply)
        return self.checked(method, {client_id: replies[client_id] for client_id in requests})

    def _worker_for(self, method: str, client_id: str, free: set[int]) -> int | None:
        """The worker for this request: the one holding the client's round state, else any free one (a method that
        opens such state places the client there)."""
        if method not in OPENING_METHODS and client_id in self.placement:
            index = self.placement[client_id]
            return index if index in free else None
        if not free:
            return None
        index = min(free)
        if method in OPENING_METHODS:
            self.placement[client_id] = index
        return index

    def _wait_timeout(self, running: Mapping[Any, tuple[str, int, float]]) -> float | None:
        if self.timeout_s is None:
            return None
        oldest = min(started for _, _, started in running.values())
        return max(0.0, oldest + self.timeout_s - time.monotonic())

    def _result(self, ref: Any, client_id: str, index: int, began: float) -> Reply | ClientFailure:
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayActorError as error:  # the worker process died mid-call
            log.warning("worker %d died running client '%s'; replacing it", index, client_id)
            self._replace(index)
            return ClientFailure(f"WorkerDied: the worker running client '{client_id}' died "
                                 f"({type(error).__name__})", round(time.monotonic() - began, 3))

    def _expire(self, method: str, running: dict[Any, tuple[str, int, float]],
                replies: dict[str, Reply | ClientFailure], free: set[int],
                on_reply: Callable[[str], None] | None) -> None:
        """Calls past the deadline (any method: a hung protocol stage or evaluation too): a failure each, their
        workers replaced."""
        now = time.monotonic()
        for ref, (client_id, index, began) in list(running.items()):
            if now - began >= self.timeout_s:
                running.pop(ref)
                self._replace(index)
                replies[client_id] = ClientFailure(f"ClientTimeout: client '{client_id}' did not finish its {method} "
                                                   f"within {self.timeout_s:g} s", round(now - began, 3))
                free.add(index)
                if on_reply is not None:
                    on_reply(client_id)

    def worker_pids(self) -> list[int]:
        """The workers' process ids (to check where state lives, or to kill one in a test)."""
        return self.ray.get([worker.pid.remote() for worker in self.workers])

    def close(self) -> None:
        for worker in self.workers:
            self.ray.kill(worker, no_restart=True)
        self.workers = []
