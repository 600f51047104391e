"""The server's side: a Flower ``ServerApp`` that runs the fedlit loop with a :class:`FlowerBackend`.

Its run config (written by ``fedlit deploy``) carries the fedlit command and config (no client's data path: the
parties hold those) and how many parties to wait for. Errors end the run with one named line, as ``fedlit fit``
does; ``deployment.json`` in the output directory records which SuperNode served which client and how many
client secrets were found in this process (none, by construction; checked after every request).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlit.flower.backend import FlowerBackend
from fedlit.io import atomic_write_bytes

app = ServerApp()


def client_secrets_in_process() -> int:
    """Objects of this process that hold a client's secure-aggregation secrets (its protocol state)."""
    from fedlit.secure.party import SecAggParty
    from fedlit.secure.protocol import SecAggClient

    with warnings.catch_warnings():  # isinstance on some library objects warns of their deprecation
        warnings.simplefilter("ignore")
        return sum(isinstance(obj, SecAggClient | SecAggParty) for obj in gc.get_objects())


class AuditedFlowerBackend(FlowerBackend):
    """A FlowerBackend that counts, after every request, the client secrets this process holds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.most_secrets_seen = 0

    def call(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        replies = super().call(*args, **kwargs)
        self.most_secrets_seen = max(self.most_secrets_seen, client_secrets_in_process())
        return replies


@app.main()
def main(grid: Grid, context: Context) -> None:
    with contextlib.redirect_stderr(sys.stdout):  # Flower's log stream carries what the app prints to stdout
        _run(grid, context)


class RunFailed(RuntimeError):
    """The run's error in one line: Flower logs it and records it as the run's status details, which
    ``fedlit deploy`` prints."""


def _run(grid: Grid, context: Context) -> None:
    from fedlit.cli import error_line, fit_parser, quiet_libraries, run_fit
    from fedlit.loop import NothingTrained, RunInterrupted

    settings = context.run_config
    command = str(settings["fedlit-command"])
    quiet_libraries()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("fedlit").addHandler(handler)
    logging.getLogger("fedlit").setLevel(logging.INFO)
    logging.getLogger("fedlit").propagate = False
    backend = AuditedFlowerBackend(grid, parties=int(settings["parties"]), wait_s=float(settings["wait-s"]),
                                   reply_timeout_s=float(settings["reply-timeout-s"]))
    parser = fit_parser(command)
    try:
        config = parser.parse_object(yaml.safe_load(str(settings["fedlit-config"])))
        config.resume = bool(settings["resume"])
        run_fit(command, config, parser, backend=backend)
    except (Exception, RunInterrupted) as error:  # noqa: BLE001 - one named line, as fedlit fit
        what = "nothing was trained: " if isinstance(error, NothingTrained) else ""
        raise RunFailed(what + error_line(error)) from (error if settings.get("debug", False) else None)
    record = {"flower_run_id": context.run_id, "parties": backend.nodes,
              "client_secrets_in_server_process": backend.most_secrets_seen}
    atomic_write_bytes(Path(config.output_dir, "deployment.json"), (json.dumps(record, indent=1) + "\n").encode())
