"""A Flower deployment on localhost for tests: a SuperLink and one SuperNode per party, each its own OS process,
and ``fedlit deploy`` runs against them."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalDeployment:
    """Processes in their own sessions (so a kill takes a process with its children), logs under ``root``."""

    def __init__(self, root: Path, parties: dict[str, Path], threads: int | None = None) -> None:
        """``threads``: each party's torch threads (its model host's, and ``OMP_NUM_THREADS`` for its message
        processes); default, as many as the machine's CPUs, as a party on a machine of its own would use."""
        self.root, self.parties, self.threads = root, parties, threads  # client id -> its party-config file
        self.port = free_port()
        self.certs = root / "certs"  # TLS and SuperNode authentication, from the demo script
        subprocess.run([str(SCRIPTS / "make_certificates.sh"), str(self.certs), *parties, "rogue"], check=True,
                       capture_output=True)
        home = root / "flwr-home"  # the Flower CLI's connection to this SuperLink
        home.mkdir()
        (home / "config.toml").write_text(f'[superlink]\ndefault = "local"\n[superlink.local]\naddress = '
                                          f'"127.0.0.1:{self.port}"\nroot-certificates = "{self.certs / "ca.crt"}"\n')
        # the SuperLink starts Flower's own executables (flower-superexec, flwr-serverapp) from PATH
        # (transformers' Hub-kernel switch on, as on a fresh machine: each fedlit process must turn it off itself)
        self.env = {**{k: v for k, v in os.environ.items() if k != "FEDLIT_HUB_CODE"}, "USE_HUB_KERNELS": "YES",
                    "FLWR_HOME": str(root / "flwr-home"),
                    "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
                    **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        self.processes: dict[str, subprocess.Popen] = {}
        self.model_host: str | None = None

    def _start(self, name: str, *command: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "a")  # noqa: SIM115 - the process owns it
        process = subprocess.Popen([str(BIN / command[0]), *command[1:]], stdout=log, stderr=subprocess.STDOUT,
                                   env=self.env, start_new_session=True)
        self.processes[name] = process
        return process

    def start_superlink(self) -> None:
        # TLS, SuperNode authentication, and its state in a database: restarted, it still knows the SuperNodes,
        # which reconnect by themselves
        self._start("superlink", "flower-superlink", "--port", str(self.port),
                    "--ssl-ca-certfile", str(self.certs / "ca.crt"), "--ssl-certfile", str(self.certs / "server.crt"),
                    "--ssl-keyfile", str(self.certs / "server.key"), "--enable-supernode-auth",
                    "--database", str(self.root / "superlink.db"), "--disable-runtime-dependency-installation")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise TimeoutError("the SuperLink did not start")

    def register(self, client_id: str) -> None:
        """Register the party's public key with the SuperLink (the federation operator's step)."""
        subprocess.run([str(BIN / "flwr"), "supernode", "register", str(self.certs / f"{client_id}.pub"), "local"],
                       env=self.env, check=True, capture_output=True)

    def start_ray_head(self) -> str:
        """A Ray instance for the parties' model hosts (on a real deployment each party starts its own on its
        machine; here they share one, each host an actor named after its party); its address."""
        port = free_port()
        token = self.root / "ray-auth-token"  # (the party's token: ~/.ray/auth_token on a party's machine)
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
        self._start("ray-head", "ray", "start", "--head", "--port", str(port), "--num-cpus", "2",
                    "--include-dashboard=false", "--disable-usage-stats", "--block")
        self.model_host = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return self.model_host
            time.sleep(0.5)
        raise TimeoutError("the Ray head did not start")

    def start_supernode(self, client_id: str, key: str | None = None) -> subprocess.Popen:
        """The party's SuperNode, authenticating with its own key (or ``key``'s); with a model host, its own state
        directory under ``root/state/<client>``."""
        node_config = f'client-id="{client_id}" party-config="{self.parties[client_id]}"'
        if self.model_host is not None:
            node_config += f' model-host="{self.model_host}" state-dir="{self.root / "state" / client_id}"'
            if self.threads:
                node_config += f" model-host-threads={self.threads}"
        return self._start(key or client_id, "flower-supernode", "--superlink", f"127.0.0.1:{self.port}",
                           "--root-certificates", str(self.certs / "ca.crt"),
                           "--auth-supernode-private-key", str(self.certs / (key or client_id)),
                           "--port", str(free_port()), "--node-config", node_config)

    def start(self) -> LocalDeployment:
        self.start_superlink()
        for client_id in self.parties:
            self.register(client_id)
            self.start_supernode(client_id)
        return self

    def deploy(self, config: Path, *options: str) -> subprocess.Popen:
        """``fedlit deploy`` of ``config`` (output in ``deploy.log``)."""
        return self._start("deploy", "fedlit", "deploy", "--config", str(config), "--superlink",
                           f"127.0.0.1:{self.port}", "--root_certificates", str(self.certs / "ca.crt"),
                           "--parties", str(len(self.parties)), *options)

    def kill(self, name: str, signum: int = signal.SIGKILL) -> None:
        """``signum`` to the process and every process it started (the SuperLink's ServerApp runs detached)."""
        process = self.processes.pop(name)
        try:
            tree = [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]
        except psutil.NoSuchProcess:
            tree = []
        for member in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.send_signal(signum)
        _, alive = psutil.wait_procs(tree, timeout=10)
        for member in alive:  # (a Ray worker may outlive a stopped head by tens of seconds)
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()
        psutil.wait_procs(alive, timeout=10)
        process.wait(timeout=30)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text()

    def stop(self) -> None:
        for name in list(self.processes):
            self.kill(name, signal.SIGTERM)
