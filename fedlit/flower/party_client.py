"""The party's fedlit client, built from the run's config merged with its own, and answers to the messages that need
it (a fit, an evaluation, an inference query or extraction, ``describe``): in the process Flower starts for a
message, or in the party's long-lived model host (:mod:`fedlit.flower.model_host`)."""

from __future__ import annotations

import functools
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fedlit.hub_code import hub_code_allowed
from fedlit.secure.config import SecureAggregationConfig

if TYPE_CHECKING:  # (imported where a client is built: a protocol stage's process needs neither)
    from fedlit.client import ClientApp as FedlitClientApp
    from fedlit.inference.inference_client import InferenceClientApp

    Party = FedlitClientApp | InferenceClientApp

INFER = "infer"  # the command of a private-inference deployment (every other command is an algorithm)


@functools.lru_cache(maxsize=1)
def party_client(client_id: str, command: str, config_text: str, package: Path | None = None,
                state_dir: Path | None = None) -> Party:
    """The party's fedlit ClientApp, built by the same composition as a local run but over its own data only
    (and the client ``package`` the server sent, if the algorithm trains on one): it keeps no server state (a
    plain FedAvg over itself, the default fault policy, nothing written but a line in ``model-loads.log``). For
    ``infer``, its private-inference client (:func:`inference_party`)."""
    from fedlit.cli.fit_command import compose, fit_parser
    from fedlit.client import ClientApp as FedlitClientApp
    from fedlit.faults import FaultPolicy
    from fedlit.flower.received import ReceivedPackage
    from fedlit.strategies import FedAvg

    plain = yaml.safe_load(config_text)
    if command == INFER:
        return _logged(inference_party(client_id, plain), client_id, command, state_dir)
    parser = fit_parser(command)
    config = parser.parse_object(plain)
    loop = compose(command, config, parser, backend=ReceivedPackage(package), strategy=FedAvg(),
                   secure_aggregation=None, privacy=None, faults=FaultPolicy(), loggers=[],
                   output_dir=tempfile.gettempdir())  # (the fault policy is the server's: min_clients counts parties)
    if client_id not in loop.clients:
        raise ValueError(f"client-id '{client_id}': this party's data makes clients {sorted(loop.clients)}; set "
                         "data in its party-config so that it makes this one")
    return _logged(FedlitClientApp(loop.clients[client_id], loop.module_factory, loop.trainer_kwargs,
                                   secure_config(plain), state_dir, loop.federation.watermark,
                                   loop.federation.insecure_seed), client_id, command, state_dir)


def inference_party(client_id: str, config: dict[str, Any]) -> InferenceClientApp:
    """The party's private-inference client: the run's settings, with its own ``prompts`` (file), ``output`` (its
    answers file, never overwritten) and, optionally, its own ``local`` model and settings from its party-config."""
    from fedlit.cli.infer_command import inference_settings, local_model
    from fedlit.inference.inference_client import InferenceClientApp

    missing = [key for key in ("prompts", "output") if not config.get(key)]
    if missing:
        raise ValueError(f"client '{client_id}': its party-config sets no {' and no '.join(missing)} (its prompts "
                         "file and its answers file)")
    output = Path(config["output"])
    if output.exists():
        raise FileExistsError(f"client '{client_id}': output {output} exists: answers are never overwritten, name "
                              "another file in its party-config")
    return InferenceClientApp(client_id, str(config["prompts"]), inference_settings(config), output,
                              local_model(config.get("local")))


def _logged(party: Party, client_id: str, command: str, state_dir: Path | None) -> Party:
    """``party``, after a line in ``state_dir/model-loads.log`` (the test of "once per run" counts them)."""
    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
        with open(state_dir / "model-loads.log", "a") as log:
            log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} client '{client_id}' ({command}) built in process "
                      f"{os.getpid()}\n")
    return party


Build = tuple[str, str, str, "Path | None", "Path | None"]  # party_client's arguments: what the party's client is


def answer_with_client(build: Build, method: str, payload: Any, state: bytes | None) -> tuple[Any, bytes | None]:
    """``method`` (a fit, an evaluation, an inference query or extraction, ``describe``) answered by the party's
    client (built once per process and ``build``), with its ``state`` between messages (bytes, kept by the caller:
    secure-aggregation keys and shares, or the prompts as sent); returns the reply and the state after it."""
    party = party_client(*build)
    party.restore_state(state)
    if method == "describe":
        reply = {**party.describe(), "hub_code": hub_code_allowed()}
    else:
        reply = getattr(party, method)(payload)
    return reply, party.saved_state()


def secure_config(config: dict[str, Any]) -> SecureAggregationConfig | None:
    settings = config.get("secure_aggregation")
    return None if settings is None else SecureAggregationConfig(**settings)
