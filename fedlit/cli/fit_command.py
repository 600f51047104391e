"""``fedlit fit`` and every algorithm command: the parser built from the algorithm's signature, the Federation's
fields and Lightning's Trainer, and the run a parsed config describes."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from lightning.pytorch.loggers import Logger

from fedlit.algorithms import fed_co_llm, fed_dpo, fed_hetero_llm, fed_homo_llm, fed_kseed, fed_mkt, fed_ost
from fedlit.algorithms.fed_homo_llm import DEFAULT_LORA
from fedlit.client import CLIENT_TRAINER_DEFAULTS
from fedlit.federation import FEDERATION_KEYS, Federation
from fedlit.server.loop import FederatedLoop
from fedlit.server.run_dir import check_fresh, lock_output_dir
from fedlit.server.run_records import default_loggers


def quiet_libraries() -> None:
    """Per-client Trainers would otherwise print hardware banners and tips once per client per round."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.fabric.utilities.distributed"):  # (a multi-device fit's ranks: "Initializing ...")
        logging.getLogger(name).setLevel(logging.WARNING)
    from datasets.utils.logging import disable_progress_bar as datasets_quiet
    from transformers.utils.logging import disable_progress_bar as transformers_quiet

    datasets_quiet()
    transformers_quiet()
    # fedlit rewrites the CSVLogger's file from the checkpointed history on resume: nothing is lost; FedKSeed's
    # client trains its model in eval mode on purpose (no dropout between the two passes of an estimate)
    for message in ("`loftq_config` specified", "`is_gradient_checkpointing` is deprecated", ".*LeafSpec",
                    "Experiment logs directory .* exists and is not empty", "Found .* module.* in eval mode"):
        warnings.filterwarnings("ignore", message=message)


# subcommand -> (algorithm, description, its peft default)
ALGORITHMS = {
    "fit": (fed_homo_llm, "run a federated fine-tuning (FedHomoLLM)",
            {"class_path": "peft.LoraConfig", "init_args": DEFAULT_LORA}),
    "fedhetero": (fed_hetero_llm, "run FedHeteroLLM: each client distils a common mentee from its own LLM",
                  {"class_path": "peft.LoraConfig", "init_args": DEFAULT_LORA}),
    "fedco": (fed_co_llm, "run FedCoLLM: clients federate a small LM, the server co-tunes it with its LLM",
              {"class_path": "peft.LoraConfig", "init_args": DEFAULT_LORA}),
    "fedkseed": (fed_kseed, "run FedKSeed: zeroth-order steps along K shared seeds, K coefficients on the wire",
                 {"class_path": "peft.LoraConfig", "init_args": DEFAULT_LORA}),
    "fedmkt": (fed_mkt, "run FedMKT: a server LLM and client SLMs (any tokenizers) trade top-k logits on public text",
               {"class_path": "peft.LoraConfig", "init_args": DEFAULT_LORA}),
    "fedpo": (fed_dpo, "run federated DPO: clients tune the adapter on preference pairs (prompt, chosen, rejected)",
              {"class_path": "peft.LoraConfig", "init_args": DEFAULT_LORA}),
    "fedost": (fed_ost, "run federated offsite-tuning (FedOST): adapters against an emulator, plugged back in",
               None),
}


def fit_parser(command: str = "fit") -> ArgumentParser:
    algorithm, description, peft_default = ALGORITHMS[command]
    parser = ArgumentParser(description=description[0].upper() + description[1:] + ".")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file")
    parser.add_function_arguments(algorithm, skip={"federation"}, fail_untyped=True)
    # the Federation's fields are top-level keys (rounds:, strategy:, ...); its Trainer options are `trainer:`
    parser.add_class_arguments(Federation, nested_key=None, skip={"trainer", "run_config"}, fail_untyped=True,
                               sub_configs=True)
    parser.add_class_arguments(L.Trainer, "trainer", instantiate=False, skip={"callbacks"},
                               sub_configs=True)
    parser.set_defaults({f"trainer.{key}": value for key, value in CLIENT_TRAINER_DEFAULTS.items()})
    parser.set_defaults({"peft": peft_default, "strategy": {"class_path": "fedlit.strategies.FedAvg"},
                         "backend": {"class_path": "fedlit.backends.LocalBackend"},
                         "output_dir": f"outputs/{'fedlit' if command == 'fit' else command}"})
    parser.add_argument("--resume", type=bool, default=False,
                        help="continue from the newest checkpoint in output_dir")
    parser.add_argument("--debug", type=bool, default=False,
                        help="show the full traceback of an error (also: FEDLIT_DEBUG=1)")
    return parser


def compose(command: str, config: Namespace, parser: ArgumentParser | None = None,
            **federation_changes: Any) -> FederatedLoop:
    """The run a parsed config describes: its algorithm's own keys, plus a
    :class:`~fedlit.federation.Federation` from the top-level shared keys and ``trainer:``, with
    ``federation_changes`` (live objects a config cannot hold, such as a Flower backend) applied."""
    parser = parser or fit_parser(command)
    init = parser.instantiate(config)
    federation = Federation(**{key: init[key] for key in FEDERATION_KEYS if key not in ("trainer", "run_config")},
                            trainer=dict(vars(config.trainer)), run_config=run_config(parser, config))
    federation = federation.replace(loggers=with_sweep_logger(federation)).replace(**federation_changes)
    own = {key: init[key] for key in vars(config)
           if key not in (*FEDERATION_KEYS, "resume", "config", "debug", "__path__")}
    return ALGORITHMS[command][0](**own, federation=federation)


def with_sweep_logger(federation: Federation) -> list[Logger] | None:
    """A run that a W&B sweep agent starts (``WANDB_SWEEP_ID``), or that ``fedlit sweep`` tracks
    (``FEDLIT_WANDB=1``), must report to W&B: its loggers plus fedlit's WandbLogger unless it has one."""
    loggers = federation.loggers
    if not (os.environ.get("WANDB_SWEEP_ID") or os.environ.get("FEDLIT_WANDB") == "1"):
        return loggers
    from lightning.pytorch.loggers import WandbLogger as AnyWandbLogger

    from fedlit.tracking import WandbLogger

    loggers = list(loggers) if loggers is not None else default_loggers(Path(federation.output_dir))
    return loggers if any(isinstance(x, AnyWandbLogger) for x in loggers) else [*loggers, WandbLogger()]


def run_config(parser: ArgumentParser, config: Namespace) -> dict[str, Any]:
    """The merged config as plain data (what ``--print_config`` shows), without the command's own switches."""
    data = yaml.safe_load(parser.dump(config, skip_validation=True, skip_unset=False))
    return {key: value for key, value in data.items() if key not in ("config", "resume", "debug")}


def expand_output_dir(config: Namespace) -> None:
    """``output_dir`` may name environment variables (``outputs/sweep/$WANDB_RUN_ID``: one directory per run
    that a W&B sweep agent starts); one that is not set is an error, not a literal ``$`` directory."""
    expanded = os.path.expandvars(config.output_dir)
    if "$" in expanded:
        raise ValueError(f"output_dir '{config.output_dir}' names an environment variable that is not set")
    config.output_dir = expanded


def run_fit(command: str, config: Namespace, parser: ArgumentParser, **federation_changes: Any) -> None:
    expand_output_dir(config)
    output_dir = Path(config.output_dir)
    lock_output_dir(output_dir)  # before anything is written: a second run into it fails at once
    if not config.resume:
        check_fresh(output_dir)
    run = compose(command, config, parser, **federation_changes)
    run.fit(resume=config.resume)
    print(f"done: metrics in {output_dir / 'metrics.csv'}, adapter in {output_dir / 'adapter'}"
          + exclusions_note(run.history))


def exclusions_note(history: list[dict[str, Any]]) -> str:
    """``; 2 client fits excluded (ClientTimeout x2), 1 evaluation missing (WorkerDied x1)``, or nothing."""
    from fedlit.tracking.summary import exclusions

    parts = []
    for kind, counted in exclusions(history).items():
        total = sum(counted.values())
        if total:
            what = ("client fit" if kind == "fits" else "evaluation") + ("s" if total > 1 else "")
            verb = "excluded" if kind == "fits" else "missing"
            reasons = ", ".join(f"{reason} x{n}" for reason, n in counted.most_common())
            parts.append(f"{total} {what} {verb} ({reasons})")
    return f"; {', '.join(parts)}" if parts else ""
