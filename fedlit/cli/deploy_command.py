"""``fedlit deploy``: its options; what it can run is :mod:`fedlit.cli.deployable`'s table, the submission and
following of the run :mod:`fedlit.flower.deploy`'s."""

from __future__ import annotations

from typing import Literal

from jsonargparse import ArgumentParser, Namespace

from fedlit.cli.deployable import DEPLOYABLE


def deploy_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Run a fedlit config across parties on a Flower SuperLink.")
    parser.add_argument("--config", type=str, required=True, help="the run's YAML config (no client data paths)")
    parser.add_argument("--command", type=Literal[tuple(DEPLOYABLE)], default="fit",
                        help="the algorithm, as the fedlit subcommand names it, or infer (private inference: the "
                             "server's model answers each party's prompts)")
    parser.add_argument("--superlink", type=str, default="127.0.0.1:9093", help="SuperLink address host:port")
    parser.add_argument("--parties", type=int, required=True, help="SuperNodes to wait for before the run starts")
    parser.add_argument("--wait_s", type=float, default=300.0, help="how long to wait for them")
    parser.add_argument("--reply_timeout_s", type=float, default=600.0,
                        help="a party that has not answered a request (other than a fit) by then has failed")
    parser.add_argument("--insecure", type=bool, default=False, help="plain HTTP to the SuperLink (local demos)")
    parser.add_argument("--root_certificates", type=str | None, default=None,
                        help="PEM CA certificate that signed the SuperLink's (TLS)")
    parser.add_argument("--resume", type=bool, default=False, help="continue from the output_dir's checkpoints")
    parser.add_argument("--debug", type=bool, default=False,
                        help="tracebacks, and each request's round trip, in the run's log")
    return parser


def run_deploy(settings: Namespace) -> int:
    from fedlit.flower.deploy import deploy  # (Flower's CLI helpers load only for this command)

    return deploy(settings)
