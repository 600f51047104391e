"""FlowerBackend: the loop's requests go to the parties' SuperNodes as Flower messages over the SuperLink.

The server knows each party only by the client id its SuperNode names (``--node-config 'client-id=...'``) and
the sizes of its splits: it never reads a client's data, and a client's secure-aggregation state (keys, seeds,
shares) lives in that party's SuperNode, so it never exists in the server process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Message

from fedlit.backends.base import Backend, ClientAppFactory, Reply
from fedlit.backends.messages import ClientFailure
from fedlit.data.federated import FederatedData, PartyData
from fedlit.flower.envelope import MESSAGE_TYPE, read_reply, request_content
from fedlit.flower.package import package_digest, package_files

if TYPE_CHECKING:
    from flwr.serverapp import Grid

log = logging.getLogger(__name__)
_POLL_S = 0.2


class FlowerBackend(Backend):
    """Clients are Flower SuperNodes, one per party.

    Args:
        grid: the ``ServerApp``'s grid (Flower hands it to the app's main).
        parties: wait until this many SuperNodes are connected before the run starts.
        wait_s: how long to wait for them.
        reply_timeout_s: how long any request but a fit may go unanswered before its client counts as failed
            (a fit is bounded by ``faults.timeout_s`` when set, else by this).
    """

    simulation = False  # real parties: by default a party's exception excludes it (FaultPolicy.client_errors)

    def __init__(self, grid: Grid, parties: int, wait_s: float = 300.0, reply_timeout_s: float = 600.0) -> None:
        if parties < 1:
            raise ValueError(f"parties must be >= 1, got {parties}")
        self.grid, self.parties, self.wait_s, self.reply_timeout_s = grid, parties, wait_s, reply_timeout_s
        self.nodes: dict[str, int] = {}  # client id -> Flower node id
        self.hub_code: dict[str, bool] = {}  # client id -> whether its party allows code from the Hub
        self.sizes: dict[str, tuple[int, int]] = {}  # client id -> (train, held-out) sizes, once discovered
        self.package: tuple[str, dict[str, bytes]] | None = None  # the run's client package: digest, files
        self.fit_timeout_s = reply_timeout_s
        # each reply as it arrives (client id, method, value): what the server received, for a run's record
        self.on_receive: Callable[[str, str, Any], None] | None = None

    def federated_data(self, config: Any, tokenizer: Any) -> FederatedData:
        """The parties as the server knows them: the client id and split sizes each SuperNode reports. The
        run's ``data`` config is the parties' to apply; the server has no global held-out split."""
        sizes = self._discover()
        counts = np.array([[train + val] for train, val in sizes.values()])
        return FederatedData(clients={cid: PartyData(train, val) for cid, (train, val) in sizes.items()},
                             global_val=None, label_names=["records"], label_counts=counts)

    def client_package(self, directory: Path, build: Callable[[Path], None]) -> Path:
        """Build the package here and offer it, by digest, to every connected SuperNode before any is asked for
        its client (a party builds its client on the package); those that do not hold it get its files, once
        however often the run restarts."""
        build(directory)
        files = package_files(directory)
        self.package = package_digest(files), files
        failed = self._offer_package(self._wait_for_parties())
        if failed:
            raise RuntimeError(f"the client package did not reach SuperNode(s) {failed}")
        return directory

    def _offer_package(self, nodes: set[int]) -> dict[str, str]:
        """Offer the package (if the run has one) to ``nodes``; the failures, by node."""
        if self.package is None or not nodes:
            return {}
        digest, files = self.package
        ask = {str(node): (node, {"digest": digest, "files": None}) for node in sorted(nodes)}
        held = self._send("receive_package", ask, self.reply_timeout_s, any_client=True)
        lacking = {node: (int(node), {"digest": digest, "files": files}) for node, reply in held.items()
                   if not isinstance(reply, ClientFailure) and not reply["have"]}
        held.update(self._send("receive_package", lacking, self.reply_timeout_s, any_client=True))
        log.info("client package %s... (%d bytes) sent to SuperNode(s) %s; the others held it", digest[:12],
                 sum(map(len, files.values())), sorted(lacking) or "none")
        return {node: reply.reason for node, reply in held.items() if isinstance(reply, ClientFailure)}

    def client_ids(self) -> list[str]:
        """The parties' client ids, as their SuperNodes name them (asked once)."""
        return list(self._discover())

    def _wait_for_parties(self) -> set[int]:
        deadline = time.monotonic() + self.wait_s
        while len(online := self._online()) < self.parties:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(online)} of {self.parties} SuperNodes connected within {self.wait_s:g} s "
                                   "(parties): start one per party, pointing at this SuperLink")
            time.sleep(1.0)
        return online

    def _discover(self) -> dict[str, tuple[int, int]]:
        if not self.sizes:
            sizes, failed = self._describe(self._wait_for_parties())
            if failed:
                raise RuntimeError("SuperNode(s) could not build their client: " +
                                   "; ".join(f"{node}: {why}" for node, why in failed.items()))
            self.sizes = dict(sorted(sizes.items()))
            log.info("parties: %s", ", ".join(f"{cid} (node {node})" for cid, node in sorted(self.nodes.items())))
        return self.sizes

    def _online(self) -> set[int]:
        return set(self.grid.get_node_ids())

    def _describe(self, nodes: set[int]) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
        """Ask ``nodes`` which client each serves (and its split sizes) and map those clients to them; the sizes
        by client, and the failures by node."""
        described = self._send("describe", {str(node): (node, b"") for node in sorted(nodes)}, self.reply_timeout_s,
                               any_client=True)
        sizes: dict[str, tuple[int, int]] = {}
        for node, reply in described.items():
            if isinstance(reply, ClientFailure):
                continue
            client_id = str(reply["client_id"])
            if client_id in sizes:
                raise ValueError(f"SuperNodes {self.nodes[client_id]} and {node} both name client '{client_id}' "
                                 "(node config client-id): give each party its own")
            self.nodes[client_id] = int(node)
            self.hub_code[client_id] = bool(reply.get("hub_code", False))
            sizes[client_id] = (int(reply["train_size"]), int(reply["val_size"]))
        return sizes, {node: reply.reason for node, reply in described.items() if isinstance(reply, ClientFailure)}

    def _reconnect(self, client_ids: list[str]) -> set[str]:
        """Clients among ``client_ids`` whose SuperNode is offline: a party that restarted its SuperNode has a
        new node id, found (and offered the run's package) by asking the online nodes no client is mapped to."""
        online = self._online()
        offline = {cid for cid in client_ids if self.nodes[cid] not in online}
        new_nodes = online - set(self.nodes.values())
        if offline and new_nodes:
            new_nodes -= set(map(int, self._offer_package(new_nodes)))
            for client_id in self._describe(new_nodes)[0]:
                log.info("client '%s' reconnected (node %d)", client_id, self.nodes[client_id])
            offline = {cid for cid in client_ids if self.nodes[cid] not in online}
        return offline

    def start(self, app_factory: ClientAppFactory, timeout_s: float | None) -> None:
        """The parties build their own apps; only the fit deadline is taken."""
        self.fit_timeout_s = timeout_s or self.reply_timeout_s

    def call(self, method: str, requests: Mapping[str, Any],
             on_reply: Callable[[str], None] | None = None) -> dict[str, Reply | ClientFailure]:
        timeout = self.fit_timeout_s if method == "fit" else self.reply_timeout_s
        unknown = sorted(set(requests) - set(self.nodes))
        if unknown:
            raise KeyError(f"no SuperNode serves client(s) {unknown} (parties: {sorted(self.nodes)})")
        offline = self._reconnect(list(requests))
        replies: dict[str, Reply | ClientFailure] = {
            cid: ClientFailure(f"the SuperNode of client '{cid}' is offline") for cid in offline}
        live = {cid: (self.nodes[cid], req) for cid, req in requests.items() if cid not in offline}
        replies.update(self._send(method, live, timeout, on_reply) if live else {})
        return {cid: replies[cid] for cid in requests}

    def _send(self, method: str, requests: Mapping[str, tuple[int, Any]], timeout: float,
              on_reply: Callable[[str], None] | None = None, any_client: bool = False) -> dict[str, Any]:
        """Push one message per client, pull replies until all came or ``timeout`` passed (those missing
        are failures). ``any_client``: the keys are nodes (the server does not know their clients yet)."""
        began = time.monotonic()
        sent: dict[str, tuple[str, str]] = {}  # message id -> (client, nonce)
        messages = []
        for client_id, (node, payload) in requests.items():
            content, nonce = request_content(method, payload)
            message = Message(content, dst_node_id=node, message_type=MESSAGE_TYPE, group_id=method, ttl=timeout + 60)
            messages.append((client_id, nonce, message))
        for (client_id, nonce, _), message_id in zip(messages, self.grid.push_messages([m for *_, m in messages]),
                                                      strict=True):
            sent[message_id] = (client_id, nonce)
        replies: dict[str, Any] = {}
        while sent and time.monotonic() - began < timeout:
            for message in self.grid.pull_messages(list(sent)):
                client_id, nonce = sent.pop(message.metadata.reply_to_message_id)
                replies[client_id] = read_reply(message, None if any_client else client_id, nonce)
                if self.on_receive is not None:
                    self.on_receive(client_id, method, replies[client_id])
                if on_reply is not None:
                    on_reply(client_id)
            if sent:
                time.sleep(_POLL_S)
        log.debug("%s: %d replies in %.3f s", method, len(replies), time.monotonic() - began)
        for client_id, _ in sent.values():
            replies[client_id] = ClientFailure(f"no reply within {timeout:g} s (party gone?)",
                                               round(time.monotonic() - began, 3))
        return self.checked(method, {client_id: replies[client_id] for client_id in requests})
