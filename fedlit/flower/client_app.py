"""The party's side: a Flower ``ClientApp`` that a SuperNode runs for each message. It builds the party's fedlit
client from the run's config merged with the party's own settings (its node config), answers the request, and
keeps the client's secure-aggregation state in the SuperNode's context state, on the party's machine.

Node config (``flower-supernode --node-config``):
    client-id: this party's client id (required).
    party-config: a YAML file of the party's own keys, merged over the run's config: its ``data`` (source, which
        client its records make), its teacher model, its ``trainer`` device, ...
    cache-dir: where it keeps client packages the server sends (default: ``$FEDLIT_CACHE``, ``~/.cache/fedlit``).
    state-dir: where its client keeps state between rounds, by run (its error-feedback residual under
        compression; default: ``client-state`` under the cache directory). Each time the party builds its client
        (loading its base model), a line goes to ``model-loads.log`` there.
    model-host: the address of the party's own Ray instance (``ray start --head`` on the party's machine): fits,
        evaluations and ``describe`` then run in a long-lived actor there, which builds the party's client once
        per run (:mod:`fedlit.flower.model_host`); without it each message's process builds it again.
    model-host-threads: the host's torch threads (default: one per CPU, as a plain process on most machines).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from fedlit.backends.messages import ClientFailure
from fedlit.files import cache_dir
from fedlit.flower.envelope import read_request, reply_content
from fedlit.flower.model_host import hosted_answer
from fedlit.flower.package import package_dir, store_package
from fedlit.flower.party_client import answer_with_client, secure_config
from fedlit.secure.client_endpoint import SecAggParty

app = ClientApp()
_STATE = "fedlit-party-state"  # secure-aggregation keys and shares, or the prompts as sent
_PACKAGE = "fedlit-package"
_NEEDS_CLIENT = ("describe", "fit", "evaluate", "query", "extract")
METHODS = (*_NEEDS_CLIENT, "receive_package", "secagg_setup", "secagg_share", "secagg_receive_shares",
           "secagg_unmask")


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``, nested mappings merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def party_config(context: Context) -> tuple[str, str, dict[str, Any]]:
    """(client id, command, the run's config with this party's own settings merged over it)."""
    node = context.node_config
    if "client-id" not in node:
        raise ValueError("this SuperNode has no client-id: start it with --node-config 'client-id=\"...\"'")
    config = yaml.safe_load(str(context.run_config["fedlit-config"]))
    if "party-config" in node:
        path = Path(str(node["party-config"]))
        try:
            own = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"party-config {path}: {error}") from None
        config = merge(config, own)
    return str(node["client-id"]), str(context.run_config["fedlit-command"]), config


def _answer(context: Context, method: str, payload: Any) -> Any:
    if method not in METHODS:
        raise ValueError(f"unknown request method {method!r}")
    client_id, command, config = party_config(context)
    cache = Path(str(context.node_config["cache-dir"])) if "cache-dir" in context.node_config else None
    if method == "receive_package":
        return client_id, _receive_package(context, payload, cache)
    kept = context.state.config_records.get(_STATE)
    state = bytes(kept["state"]) if kept is not None else None
    if method in _NEEDS_CLIENT:
        package = context.state.config_records.get(_PACKAGE)
        state_dir = (Path(str(context.node_config["state-dir"])) if "state-dir" in context.node_config
                     else (cache or cache_dir()) / "client-state")
        build = (client_id, command, yaml.safe_dump(config),
                 None if package is None else package_dir(str(package["digest"]), cache), state_dir)
        host, threads = context.node_config.get("model-host"), context.node_config.get("model-host-threads")
        reply, state = (hosted_answer(str(host), int(threads or os.cpu_count() or 1), build, method, payload, state)
                        if host else answer_with_client(build, method, payload, state))
    else:  # a protocol stage needs no model: the party answers it without loading one
        party = SecAggParty(client_id, secure_config(config))
        if method != "secagg_setup":  # (the setup starts a round's state afresh)
            party.restore_state(state)
        reply = getattr(party, method)(payload)
        state = party.saved_state()
    if state is not None:
        context.state.config_records[_STATE] = ConfigRecord({"state": state})
    return client_id, reply


def _receive_package(context: Context, offer: dict[str, Any], cache: Path | None) -> dict[str, bool]:
    """Whether this party holds the package ``offer["digest"]``, storing its files first when they came along;
    the package it holds is the one its client trains on from now on."""
    digest, files = str(offer["digest"]), offer["files"]
    directory = package_dir(digest, cache)
    if files is not None and not directory.is_dir():
        store_package(files, digest, cache)
    if directory.is_dir():
        context.state.config_records[_PACKAGE] = ConfigRecord({"digest": digest})
    return {"have": directory.is_dir()}


@app.query()
def answer(message: Message, context: Context) -> Message:
    """One request of the server's, answered; any failure goes back as this client's (named) failure."""
    request = read_request(message)
    client_id = str(context.node_config.get("client-id", "?"))
    try:
        client_id, reply = _answer(context, request.method, request.payload)
    except Exception as error:  # noqa: BLE001 - the server decides what a client's failure means
        reply = ClientFailure(f"{type(error).__name__}: {error}", raised=True)
    return Message(reply_content(request, client_id, reply), reply_to=message)
