"""What quantization costs and saves, on the quickstart task and the which-play task at the same budget.

Base precision (``--part base``): each row is one process (``fedlit fit`` with ``model.dtype`` /
``model.quantization``, everything else as the task's config): its peak RSS (LocalBackend: server and clients
share the process and its one frozen base; the peak includes loading the float32 checkpoint), the base's weights
in memory (``get_memory_footprint``), seconds per local step (client fit seconds / steps), the global
held-out loss and answer-set accuracy after the last round, and, for k-bit rows, the same final adapter loaded with
plain peft onto the full-precision base (how far the quantized base's adapter carries over).

Update compression (``--part compression``): the fp32 base, updates as float32 or quantized to 8/4/2 bits with and
without error feedback: bytes each client sends per round (the encoded bytes) and the global held-out loss.

    python experiments/quantization_table.py [--part base compression] [--tasks quickstart which_play]
        [--precisions fp32 bf16 int8 nf4] [--compressions float32 "4-bit" "2-bit, no EF" ...] [--json out.json]
        [any fedlit fit option, e.g. --rounds 2]
    python experiments/quantization_table.py --smoke --json OUT --output-dir DIR   (the tiny model: the test suite)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from smoke import parse_experiment_args

TASKS = {"quickstart": "configs/quickstart.yaml", "which_play": "configs/task_which_play.yaml"}
PRECISIONS = {
    "fp32": ["--model.dtype", "float32"],
    "bf16": ["--model.dtype", "bfloat16"],
    "int8": ["--model.quantization", json.dumps({"bits": 8})],
    "nf4": ["--model.quantization", json.dumps({"bits": 4, "quant_type": "nf4", "double_quant": True,
                                                "compute_dtype": "bfloat16"})],
}
COMPRESSIONS = {"float32": None, **{f"{bits}-bit{'' if ef else ', no EF'}": {"bits": bits, "error_feedback": ef}
                                    for bits in (8, 4, 2) for ef in (True, False)}}


def child(output: Path, fit_args: list[str]) -> None:
    """One base-precision row, in this process: train, then score the adapter on the full-precision base."""
    from fedlit.cli import compose, fit_parser, quiet_libraries
    from fedlit.data import GLOBAL
    from fedlit.lightning_modules import CausalLMModule
    from fedlit.models import ModelConfig, load_base_model
    from fedlit.validation import validate

    quiet_libraries()
    parser = fit_parser()
    config = parser.parse_args(fit_args)
    loop = compose("fit", config, parser)
    began = time.perf_counter()
    loop.fit()
    seconds = time.perf_counter() - began
    steps = config.trainer.max_steps
    train = [r for r in loop.history if r["split"] == "train"]
    rounds = loop.federation.rounds
    (final,) = [r for r in loop.history if (r["client"], r["split"], r["round"]) == (GLOBAL, "val", rounds)]
    base = loop.module_factory().model.get_base_model()
    result = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "base_mib": base.get_memory_footprint() / 2**20,
              "seconds_per_step": float(np.mean([r["seconds"] for r in train])) / steps, "run_seconds": seconds,
              "loss": final["loss"], "choice_accuracy": final.get("choice_accuracy")}
    if config.model.quantization is not None:  # the same adapter on the full-precision base, through plain peft
        from peft import PeftModel

        full = load_base_model(ModelConfig(config.model.name_or_path))
        model = PeftModel.from_pretrained(full, loop.output_dir / "adapter")
        trained = loop.module_factory()
        module = CausalLMModule(model, evaluation=trained.evaluation, tokenizer=trained.tokenizer)
        scores = validate(module, {GLOBAL: loop.evaluation.global_val}, loop.trainer_kwargs)[GLOBAL]
        result.update(full_base_loss=scores["loss"], full_base_choice_accuracy=scores.get("choice_accuracy"))
    output.write_text(json.dumps(result))


def base_rows(task: str, config: str, output_dir: Path, options: list[str], names: list[str]) -> dict[str, dict]:
    rows = {}
    for name, args in ((n, PRECISIONS[n]) for n in names):
        result = output_dir / task / f"{name}.json"
        command = [sys.executable, __file__, "--child", str(result), "--config", config,
                   "--output_dir", str(output_dir / task / name), "--progress", "false", "--loggers", "[]",
                   *args, *options]
        subprocess.run(command, check=True)
        rows[name] = json.loads(result.read_text())
        print(f"{task} {name}: {rows[name]}", flush=True)
    return rows


def compression_rows(task: str, config: str, output_dir: Path, options: list[str], names: list[str]
                     ) -> dict[str, dict]:
    from shakespeare_task import global_scores, run

    from fedlit.cli import compose, fit_parser, quiet_libraries
    from fedlit.compression import CompressionConfig

    quiet_libraries()
    cli = fit_parser()
    parsed = cli.parse_args(["--config", config, "--output_dir", str(output_dir / task / "setup"),
                             "--progress", "false", "--loggers", "[]", *options])
    base = compose("fit", parsed, cli)
    initial = base.module_factory().trainable_state_dict()
    rows = {}
    for name, settings in ((n, COMPRESSIONS[n]) for n in names):
        compression = None if settings is None else CompressionConfig(**settings)
        loop = run(name.replace(" ", "").replace(",", "-"), base, initial, output_dir / task,
                   strategy=base.federation.strategy, compression=compression)
        sent = [r["bytes_sent"] for r in loop.history if r["split"] == "train"]
        rows[name] = {"bytes_per_client_round": float(np.mean(sent)),
                      **global_scores(loop, metrics=("loss", "choice_accuracy"))}
    return rows


def show(title: str, rows: dict[str, dict], columns: dict[str, str]) -> None:
    table = Table(title=title)
    for header in ("setting", *columns.values()):
        table.add_column(header)
    for name, row in rows.items():
        cells = []
        for key in columns:
            value = row.get(key)
            cells.append("-" if value is None else f"{value:,.0f}" if key.startswith(("bytes", "peak", "base"))
                         else f"{value:.3f}" if isinstance(value, float) else str(value))
        table.add_row(name, *cells)
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", choices=("base", "compression"), default=["base", "compression"])
    parser.add_argument("--tasks", nargs="+", choices=tuple(TASKS), default=list(TASKS))
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/quantization_table"))
    parser.add_argument("--compressions", nargs="+", choices=tuple(COMPRESSIONS), default=list(COMPRESSIONS))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--precisions", nargs="+", choices=tuple(PRECISIONS), default=list(PRECISIONS))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args, options = parse_experiment_args(parser, "fit")  # a child is never started with --smoke
    if args.child is not None:
        child(args.child, options)
        return
    if args.smoke:  # one task, the nf4 base, float and 4-bit updates
        args.tasks, args.precisions, args.compressions = ["quickstart"], ["nf4"], ["float32", "4-bit"]
    results: dict[str, dict] = {}
    for task in args.tasks:
        if "base" in args.part:
            results[f"{task}/base"] = rows = base_rows(task, TASKS[task], args.output_dir, options, args.precisions)
            show(f"{task}: base precision", rows, {
                "base_mib": "base weights (MiB)", "peak_rss_mib": "peak RSS (MiB)",
                "seconds_per_step": "s / local step", "loss": "held-out loss",
                "choice_accuracy": "answer-set acc.", "full_base_loss": "adapter on fp32 base: loss",
                "full_base_choice_accuracy": "... acc."})
        if "compression" in args.part:
            results[f"{task}/compression"] = rows = compression_rows(task, TASKS[task], args.output_dir, options,
                                                                     args.compressions)
            show(f"{task}: update compression", rows, {"bytes_per_client_round": "bytes / client / round",
                                                       "loss": "held-out loss", "choice_accuracy": "answer-set acc."})
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
