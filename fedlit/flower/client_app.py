"""The party's side: a Flower ``ClientApp`` that a SuperNode runs for each message. It builds the party's fedlit
client from the run's config merged with the party's own settings (its node config), answers the request, and
keeps the client's secure-aggregation state in the SuperNode's context state, on the party's machine.

Node config (``flower-supernode --node-config``):
    client-id: this party's client id (required).
    party-config: a YAML file of the party's own keys, merged over the run's config: its ``data`` (source, which
        client its records make), its teacher model, its ``trainer`` device, ...
    cache-dir: where it keeps client packages the server sends (default: ``$FEDLIT_CACHE``, ``~/.cache/fedlit``).
    state-dir: where its client keeps state between rounds, by run (its error-feedback residual under
        compression; default: ``client-state`` under the cache directory).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import yaml
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from fedlit.backends.messages import ClientFailure
from fedlit.files import cache_dir
from fedlit.flower.envelope import read_request, reply_content
from fedlit.flower.package import package_dir, store_package
from fedlit.hub_code import hub_code_allowed
from fedlit.secure.client_endpoint import SecAggParty
from fedlit.secure.config import SecureAggregationConfig
from fedlit.secure.protocol import SecAggClient

app = ClientApp()
_STATE = "fedlit-secagg"
_PACKAGE = "fedlit-package"
_NEEDS_CLIENT = ("describe", "fit", "evaluate")
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


@functools.lru_cache(maxsize=1)
def _client_app(client_id: str, command: str, config_text: str, package: Path | None = None,
                state_dir: Path | None = None) -> Any:
    """The party's fedlit ClientApp, built by the same composition as a local run but over its own data only
    (and the client ``package`` the server sent, if the algorithm trains on one): it keeps no server state (a
    plain FedAvg over itself, the default fault policy, nothing written)."""
    from fedlit.cli.fit_command import compose, fit_parser
    from fedlit.client import ClientApp as FedlitClientApp
    from fedlit.faults import FaultPolicy
    from fedlit.flower.received import ReceivedPackage
    from fedlit.strategies import FedAvg

    plain = yaml.safe_load(config_text)
    parser = fit_parser(command)
    config = parser.parse_object(plain)
    loop = compose(command, config, parser, backend=ReceivedPackage(package), strategy=FedAvg(),
                  secure_aggregation=None, privacy=None, faults=FaultPolicy(), loggers=[],
                  output_dir=tempfile.gettempdir())  # (the fault policy is the server's: min_clients counts parties)
    if client_id not in loop.clients:
        raise ValueError(f"client-id '{client_id}': this party's data makes clients {sorted(loop.clients)}; set "
                         "data in its party-config so that it makes this one")
    return FedlitClientApp(loop.clients[client_id], loop.module_factory, loop.trainer_kwargs,
                           _secure_config(plain), state_dir, loop.federation.watermark, loop.federation.insecure_seed)


def _secure_config(config: dict[str, Any]) -> SecureAggregationConfig | None:
    settings = config.get("secure_aggregation")
    return None if settings is None else SecureAggregationConfig(**settings)


def _answer(context: Context, method: str, payload: Any) -> Any:
    if method not in METHODS:
        raise ValueError(f"unknown request method {method!r}")
    client_id, command, config = party_config(context)
    cache = Path(str(context.node_config["cache-dir"])) if "cache-dir" in context.node_config else None
    if method == "receive_package":
        return client_id, _receive_package(context, payload, cache)
    if method in _NEEDS_CLIENT:
        package = context.state.config_records.get(_PACKAGE)
        state_dir = (Path(str(context.node_config["state-dir"])) if "state-dir" in context.node_config
                     else (cache or cache_dir()) / "client-state")
        party = _client_app(client_id, command, yaml.safe_dump(config),
                            None if package is None else package_dir(str(package["digest"]), cache), state_dir)
    else:  # a protocol stage needs no model: the party answers it without loading one
        party = SecAggParty(client_id, _secure_config(config))
    state = context.state.config_records.get(_STATE)
    if state is not None and party.secure_config is not None and method != "secagg_setup":
        party.secagg = SecAggClient.from_bytes(state["state"], party.secure_config)
    if method == "describe":
        data = party.client.datamodule
        return client_id, {"client_id": client_id, "train_size": len(data.train_dataset),
                           "val_size": len(data.val_dataset), "hub_code": hub_code_allowed()}
    reply = getattr(party, method)(payload)
    if party.secagg is not None:
        context.state.config_records[_STATE] = ConfigRecord({"state": party.secagg.to_bytes()})
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
