"""What ``fedlit deploy --command`` runs across parties: every algorithm, and private inference. One table, read
by ``fedlit deploy`` (to parse the config before anything starts) and by the ServerApp (to run it)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jsonargparse import ArgumentParser, Namespace

from fedlit.cli.fit_command import ALGORITHMS, fit_parser, run_fit

if TYPE_CHECKING:
    from fedlit.flower.backend import FlowerBackend


@dataclass(frozen=True)
class Deployable:
    """What ``fedlit deploy --command`` runs across parties: how its config is parsed (here, and in the ServerApp)
    and how the ServerApp runs it on the parties' backend."""

    parser: Callable[[], ArgumentParser]
    run: Callable[[Namespace, ArgumentParser, FlowerBackend], None]


def _infer_parser() -> ArgumentParser:
    from fedlit.cli.infer_command import infer_parser

    return infer_parser(deployed=True)


def _run_infer(config: Namespace, parser: ArgumentParser, backend: FlowerBackend) -> None:
    from fedlit.cli.infer_command import run_deployed_infer

    run_deployed_infer(config, backend)


def _run_algorithm(command: str, config: Namespace, parser: ArgumentParser, backend: FlowerBackend) -> None:
    run_fit(command, config, parser, backend=backend)


# every algorithm, and private inference (the server's model in the ServerApp, each party's prompts with it)
DEPLOYABLE: dict[str, Deployable] = {
    **{name: Deployable(functools.partial(fit_parser, name), functools.partial(_run_algorithm, name))
       for name in ALGORITHMS},
    "infer": Deployable(_infer_parser, _run_infer),
}
