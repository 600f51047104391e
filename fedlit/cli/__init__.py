"""The ``fedlit`` command: ``fedlit fit --config configs/quickstart.yaml`` (FedHomoLLM), ``fedlit fedhetero``
(FedHeteroLLM), ``fedlit fedco`` (FedCoLLM), ``fedlit fedost`` (offsite-tuning), ``fedlit fedkseed`` (zeroth-order
along shared seeds), ``fedlit fedmkt`` (mutual knowledge transfer across tokenizers), ``fedlit fedpo`` (federated
DPO), ``fedlit sweep`` (a W&B sweep file run offline), ``fedlit verify`` (ownership watermarks), ``fedlit infer``
(private inference), ``fedlit evaluate`` (benchmarks through lm-evaluation-harness), ``fedlit deploy`` and
``fedlit prepare``.

Options follow LightningCLI / jsonargparse: every config key is also a command-line option
(``--trainer.max_steps 20``, ``--peft.init_args.r 16``), and ``--print_config`` shows the merged config.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from jsonargparse import ArgumentParser, Namespace

from fedlit.cli.deploy_command import deploy_parser, run_deploy
from fedlit.cli.errors import (
    EXIT_ERROR,
    EXIT_NOT_VERIFIED,
    EXIT_NOTHING_TRAINED,
    ParseError,
    check_config_files,
    error_line,
    fail,
    parse_args,
    parse_error_line,
    parse_quietly,
)
from fedlit.cli.fit_command import (
    ALGORITHMS,
    compose,
    exclusions_note,
    expand_output_dir,
    fit_parser,
    quiet_libraries,
    run_config,
    run_fit,
    with_sweep_logger,
)
from fedlit.cli.sweep_command import check_sweep_runs, run_sweep_command, sweep_parser
from fedlit.cli.verify_command import run_verify, verification_line, verify_parser
from fedlit.server.interrupts import RunInterrupted

__all__ = ["ALGORITHMS", "EXIT_ERROR", "EXIT_NOTHING_TRAINED", "EXIT_NOT_VERIFIED", "ParseError", "build_parser",
           "check_sweep_runs", "compose", "error_line", "exclusions_note", "expand_output_dir", "fit_parser", "main",
           "parse_error_line", "parse_quietly", "quiet_libraries", "run_config", "run_fit", "run_sweep_command",
           "run_verify", "sweep_parser", "verification_line", "verify_parser", "with_sweep_logger"]


@dataclass(frozen=True)
class Command:
    """A subcommand: its parser, its help line, and what runs it on the parsed settings: an exit status (the
    process exits with it), or ``None`` (the command returns: a run that trained what it was asked to)."""

    parser: Callable[[], ArgumentParser]
    help: str
    run: Callable[[str, Namespace, ArgumentParser], int | None]


def _fit(command: str, settings: Namespace, parser: ArgumentParser) -> None:
    run_fit(command, settings, parser)


def _sweep(command: str, settings: Namespace, parser: ArgumentParser) -> int:
    try:
        return run_sweep_command(settings)
    except KeyboardInterrupt:
        print("fedlit: sweep interrupted; run the same command again to resume it", file=sys.stderr)
        return 130


def _verify(command: str, settings: Namespace, parser: ArgumentParser) -> int:
    return run_verify(settings)


def _deploy(command: str, settings: Namespace, parser: ArgumentParser) -> int:
    return run_deploy(settings)


def _infer_parser() -> ArgumentParser:
    from fedlit.cli.infer_command import infer_parser

    return infer_parser()


def _infer(command: str, settings: Namespace, parser: ArgumentParser) -> int:
    from fedlit.cli.infer_command import run_infer

    return run_infer(settings, parser)


def _evaluate_parser() -> ArgumentParser:
    from fedlit.cli.evaluate_command import evaluate_parser

    return evaluate_parser()


def _evaluate(command: str, settings: Namespace, parser: ArgumentParser) -> None:
    from fedlit.cli.evaluate_command import run_evaluate

    run_evaluate(settings)


def _prepare(command: str, settings: Namespace, parser: ArgumentParser) -> None:
    from fedlit.data import prepare_shakespeare
    from fedlit.models import prepare_default_model

    print(f"default model: {prepare_default_model()}")
    print(f"shakespeare texts: {prepare_shakespeare()}")


def _algorithm_parser(command: str) -> Callable[[], ArgumentParser]:
    return lambda: fit_parser(command)


# subcommand -> how it is parsed and run: the one table main dispatches through
COMMANDS: dict[str, Command] = {
    **{name: Command(_algorithm_parser(name), description, _fit) for name, (_, description, _) in ALGORITHMS.items()},
    "deploy": Command(deploy_parser, "run a config across parties on a Flower SuperLink", _deploy),
    "sweep": Command(sweep_parser, "run a W&B sweep file offline (grid or random search)", _sweep),
    "verify": Command(verify_parser, "verify ownership watermark keys on an adapter or model", _verify),
    "infer": Command(_infer_parser, "ask the server's model privately (InferDPT) or in the clear", _infer),
    "evaluate": Command(_evaluate_parser, "score an adapter or model on lm-evaluation-harness tasks", _evaluate),
    "prepare": Command(lambda: ArgumentParser(description="Prepare the offline default model and data."),
                       "convert the packaged default model and extract the Shakespeare texts", _prepare),
}


def build_parsers() -> tuple[ArgumentParser, dict[str, ArgumentParser]]:
    """The ``fedlit`` parser and each subcommand's own parser."""
    parser = ArgumentParser(prog="fedlit", description="Federated fine-tuning of LLMs, the Lightning way.")
    subcommands = parser.add_subcommands()
    parsers = {name: command.parser() for name, command in COMMANDS.items()}
    for name, command in COMMANDS.items():
        subcommands.add_subcommand(name, parsers[name], help=command.help)
    return parser, parsers


def build_parser() -> ArgumentParser:
    return build_parsers()[0]


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    check_config_files(argv)
    parser, parsers = build_parsers()
    config = parse_args(parser, argv)
    quiet_libraries()
    name = config.subcommand
    settings = config[name]
    debug = bool(settings.get("debug")) or os.environ.get("FEDLIT_DEBUG", "") not in ("", "0")
    try:
        status = COMMANDS[name].run(name, settings, parsers[name])
    except (Exception, RunInterrupted) as error:  # noqa: BLE001 - every failure becomes one named line
        fail(error, debug)
    if status is not None:
        sys.exit(status)
