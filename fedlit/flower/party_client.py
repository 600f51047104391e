"""The party's fedlit client, built from the run's config merged with its own, and answers to the messages that need
it (a fit, an evaluation, ``describe``): in the process Flower starts for a message, or in the party's long-lived
model host (:mod:`fedlit.flower.model_host`)."""

from __future__ import annotations

import functools
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from fedlit.hub_code import hub_code_allowed
from fedlit.secure.config import SecureAggregationConfig


@functools.lru_cache(maxsize=1)
def party_client(client_id: str, command: str, config_text: str, package: Path | None = None,
                state_dir: Path | None = None) -> Any:
    """The party's fedlit ClientApp, built by the same composition as a local run but over its own data only
    (and the client ``package`` the server sent, if the algorithm trains on one): it keeps no server state (a
    plain FedAvg over itself, the default fault policy, nothing written but a line in ``model-loads.log``)."""
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
    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
        with open(state_dir / "model-loads.log", "a") as log:
            log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} client '{client_id}' ({command}) built in process "
                      f"{os.getpid()}\n")
    return FedlitClientApp(loop.clients[client_id], loop.module_factory, loop.trainer_kwargs,
                           secure_config(plain), state_dir, loop.federation.watermark, loop.federation.insecure_seed)


Build = tuple[str, str, str, "Path | None", "Path | None"]  # party_client's arguments: what the party's client is


def answer_with_client(build: Build, method: str, payload: Any, secagg: bytes | None) -> tuple[Any, bytes | None]:
    """``method`` (a fit, an evaluation, ``describe``) answered by the party's client (built once per process and
    ``build``), with its secure-aggregation state ``secagg`` (bytes, kept by the caller between messages);
    returns the reply and the state after it."""
    party = party_client(*build)
    party.restore_state(secagg)
    if method == "describe":
        data = party.client.datamodule
        reply = {"client_id": party.client_id, "train_size": len(data.train_dataset),
                 "val_size": len(data.val_dataset), "hub_code": hub_code_allowed()}
    else:
        reply = getattr(party, method)(payload)
    return reply, party.saved_state()


def secure_config(config: dict[str, Any]) -> SecureAggregationConfig | None:
    settings = config.get("secure_aggregation")
    return None if settings is None else SecureAggregationConfig(**settings)
