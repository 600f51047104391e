"""``fedlit deploy``: start a fedlit run on a running Flower SuperLink and follow it to the end.

It checks the config here (the same parser as ``fedlit fit``), then submits a Flower App whose ``ServerApp`` is
:mod:`fedlit.flower.server_app` and whose ``ClientApp`` is :mod:`fedlit.flower.client_app`, with the config in the run
config, streams the run's log and exits 0 only when the run completed. The Flower CLI's connection settings go
to a private ``FLWR_HOME``, so the user's own Flower configuration is left alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jsonargparse import Namespace

import fedlit

CONNECTION = "fedlit"


def app_dir(directory: Path) -> Path:
    """A Flower App whose components are fedlit's (the code itself comes from the installed fedlit)."""
    import tomli_w

    (directory / "fedlit_deployment").mkdir(parents=True, exist_ok=True)
    (directory / "fedlit_deployment" / "__init__.py").write_text("")
    project = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": "fedlit-deployment", "version": fedlit.__version__, "license": "Apache-2.0",
                    "description": "fedlit on Flower", "dependencies": [f"fedlit[flower]=={fedlit.__version__}"]},
        "tool": {"flwr": {"app": {
            "publisher": "fedlit",
            "components": {"serverapp": "fedlit.flower.server_app:app", "clientapp": "fedlit.flower.client_app:app"},
            "config": {"fedlit-command": "fit", "fedlit-config": "", "resume": False, "parties": 1,
                       "wait-s": 300.0, "reply-timeout-s": 600.0, "debug": False},
        }}},
    }
    (directory / "pyproject.toml").write_bytes(tomli_w.dumps(project).encode())
    return directory


def flower_home(directory: Path, superlink: str, insecure: bool, root_certificates: str | None) -> Path:
    import tomli_w

    connection: dict[str, object] = {"address": superlink}
    if insecure:
        connection["insecure"] = True
    elif root_certificates is not None:
        connection["root-certificates"] = str(Path(root_certificates).resolve())
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.toml").write_bytes(
        tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: connection}}).encode())
    return directory


def _flwr(*args: str, env: dict[str, str], capture: bool = True) -> subprocess.CompletedProcess:
    executable = shutil.which("flwr", path=str(Path(sys.executable).parent)) or "flwr"
    return subprocess.run([executable, *args], env=env, text=True, check=False,
                          capture_output=capture)


def deploy(args: Namespace) -> int:
    """Submit the run ``args`` (parsed by :func:`fedlit.cli.deploy_command.deploy_parser`) and follow it; the exit
    status."""
    import tomli_w

    from fedlit.cli.deployable import DEPLOYABLE
    from fedlit.cli.errors import parse_quietly

    parser = DEPLOYABLE[args.command].parser()
    config = parse_quietly(parser, ["--config", args.config])  # a bad config: one line, exit 2, as fedlit fit
    config.output_dir = str(Path(config.output_dir).resolve())  # the ServerApp may run in another directory
    if "backend" in config:
        del config.backend  # the server's backend is Flower's, the parties' their own process
    text = parser.dump(config, skip_none=False, skip_check=True)
    with tempfile.TemporaryDirectory(prefix="fedlit-deploy-") as tmp:
        env = {**os.environ, "FLWR_HOME": str(flower_home(Path(tmp, "home"), args.superlink, args.insecure,
                                                          args.root_certificates))}
        overrides = Path(tmp, "run-config.toml")
        overrides.write_bytes(tomli_w.dumps({"fedlit-command": args.command, "fedlit-config": text,
                                              "resume": args.resume, "parties": args.parties,
                                              "wait-s": args.wait_s, "reply-timeout-s": args.reply_timeout_s,
                                              "debug": args.debug}).encode())
        started = _flwr("run", str(app_dir(Path(tmp, "app"))), CONNECTION, "--run-config", str(overrides),
                        "--format", "json", env=env)
        try:
            reply = json.loads(started.stdout)
        except ValueError:
            reply = {"error-message": started.stdout + started.stderr}
        if "run-id" not in reply:
            why = " ".join(str(reply.get("error-message", reply)).split())[-2000:]
            print(f"fedlit: the SuperLink at {args.superlink} did not start the run: {why}", file=sys.stderr)
            return 1
        run_id = str(reply["run-id"])
        print(f"Flower run {run_id} started on {args.superlink}; output in {config.output_dir}", flush=True)
        _flwr("log", run_id, CONNECTION, "--stream", env=env, capture=False)
        status = _final_status(run_id, env)
    print(f"Flower run {run_id}: {status}", file=sys.stdout if status == "finished:completed" else sys.stderr)
    if status == "finished:completed":
        return 0
    exit_status, line = run_failure(status)
    print(f"fedlit: {line}", file=sys.stderr)
    return exit_status


def run_failure(status: str) -> tuple[int, str]:
    """The exit status and line of ``fedlit fit`` for a failed run's final Flower status: the ServerApp's
    ``[fedlit exit N] line`` (:class:`~fedlit.flower.server_app.RunFailed`), else 1 and Flower's own words."""
    from fedlit.flower.server_app import FAILED

    found = re.search(re.escape(FAILED) + r" (\d+)\] (.*)", status)
    if found is None:
        return 1, f"the run failed: {status}"
    return int(found[1]), found[2].strip()


def _final_status(run_id: str, env: dict[str, str]) -> str:
    """The run's final status, with Flower's details (the ServerApp's error) unless it completed."""
    while True:
        listed = _flwr("list", "--run-id", run_id, "--format", "json", env=env)
        try:
            run = json.loads(listed.stdout)["runs"][0]
            status, details = str(run["status"]), str(run.get("status-details", ""))
        except (ValueError, KeyError, IndexError):
            return f"unknown ({(listed.stdout + listed.stderr).strip()[-500:]})"
        if status == "finished:completed":
            return status
        if status.startswith("finished"):
            return f"{status}: {details}"
        time.sleep(1.0)
