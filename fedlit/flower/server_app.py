"""The server's side: a Flower ``ServerApp`` that runs the fedlit loop (or private inference) with a
:class:`FlowerBackend`.

Its run config (written by ``fedlit deploy``) carries the fedlit command and config (no client's data path: the
parties hold those) and how many parties to wait for. Errors end the run with one named line, as ``fedlit fit``
does; ``deployment.json`` in the output directory records which SuperNode served which client and how many
client secrets came into being in this process during the run (none, by construction; every copy is counted as it
is made, :mod:`fedlit.secret_audit`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path

import yaml
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlit.files import atomic_write_bytes
from fedlit.flower.backend import FlowerBackend
from fedlit.hub_code import hub_code_allowed
from fedlit.secret_audit import clients_secrets, watch

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    with contextlib.redirect_stderr(sys.stdout):  # Flower's log stream carries what the app prints to stdout
        _run(grid, context)


# how a failed run's status details begin: ``[fedlit exit 3] nothing was trained: ...``
FAILED = "[fedlit exit"


class RunFailed(RuntimeError):
    """The run's exit status and error in one line: Flower logs it and records it as the run's status details,
    from which ``fedlit deploy`` prints the line and exits with the status, as ``fedlit fit`` would."""


def _run(grid: Grid, context: Context) -> None:
    from fedlit.cli.deployable import DEPLOYABLE
    from fedlit.cli.errors import failure, parse_quietly
    from fedlit.cli.fit_command import quiet_libraries
    from fedlit.server.interrupts import RunInterrupted

    settings = context.run_config
    command = str(settings["fedlit-command"])
    quiet_libraries()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("fedlit").addHandler(handler)
    logging.getLogger("fedlit").setLevel(logging.DEBUG if settings.get("debug", False) else logging.INFO)
    logging.getLogger("fedlit").propagate = False
    backend = FlowerBackend(grid, parties=int(settings["parties"]), wait_s=float(settings["wait-s"]),
                            reply_timeout_s=float(settings["reply-timeout-s"]))
    deployable = DEPLOYABLE[command]
    parser = deployable.parser()
    try:
        config = parse_quietly(parser, data=yaml.safe_load(str(settings["fedlit-config"])))
        if "resume" in config:
            config.resume = bool(settings["resume"])
        with watch() as secrets_seen:
            deployable.run(config, parser, backend)
    except (Exception, RunInterrupted) as error:  # noqa: BLE001 - one named line and status, as fedlit fit
        status, line = failure(error, debug=True)
        raise RunFailed(f"{FAILED} {status}] {line}") from (error if settings.get("debug", False) else None)
    record = {"flower_run_id": context.run_id, "parties": backend.nodes,
              "hub_code": {"server": hub_code_allowed(), "parties": backend.hub_code},
              "client_secrets_in_server_process": clients_secrets(secrets_seen)}
    atomic_write_bytes(Path(config.output_dir, "deployment.json"), (json.dumps(record, indent=1) + "\n").encode())
