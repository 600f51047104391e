"""``fedlit evaluate``: a trained adapter (or a full model) scored on lm-evaluation-harness tasks; a markdown table
printed, the harness's results written as JSON beside it (never over another file)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from jsonargparse import ArgumentParser, Namespace

from fedlit.benchmarks.harness import HarnessConfig
from fedlit.cli.verify_command import add_trained_model_arguments
from fedlit.devices import DEVICE_HELP
from fedlit.models import QuantizationConfig


def evaluate_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Score a trained adapter (loaded with plain peft on its base) or a full model "
                            "(FedOST's plugged_in, FedCoLLM's LLM, any model directory) on lm-evaluation-harness "
                            "tasks: harness task names or local task YAML files.")
    add_trained_model_arguments(parser)
    parser.add_argument("--dtype", type=str, default="float32", help="dtype of the base weights")
    parser.add_argument("--quantization", type=QuantizationConfig | None, default=None,
                        help="load the base in k bits, e.g. '{bits: 4}' (bitsandbytes)")
    parser.add_class_arguments(HarnessConfig, nested_key=None, fail_untyped=True)
    parser.add_argument("--device", type=str, default="auto", help=DEVICE_HELP)
    parser.add_argument("--output", type=str | None, default=None,
                        help="the results JSON (a new file; default: harness-<time>.json beside the adapter or model; "
                             "the markdown table goes beside it as .md)")
    return parser


def results_path(config: Namespace) -> Path:
    """Where the results go: ``--output`` (refused if it exists), else a new timestamped file beside the
    adapter (or in the current directory for a model name)."""
    if config.output is not None:
        path = Path(config.output)
        if path.exists():
            raise FileExistsError(f"--output {path} exists: fedlit evaluate never overwrites a file, choose another")
        return path
    target = Path(config.adapter or config.model)
    folder = target.parent if target.exists() else Path.cwd()
    return folder / f"harness-{time.strftime('%Y%m%d-%H%M%S')}-{time.monotonic_ns() % 1000000:06d}.json"


def run_evaluate(config: Namespace) -> None:
    from fedlit.benchmarks.harness import run_harness, scores_table
    from fedlit.files import atomic_write_bytes
    from fedlit.models import load_trained_model, trained_model_tokenizer

    output = results_path(config)
    harness = HarnessConfig(**{field.name: config[field.name] for field in dataclasses.fields(HarnessConfig)})
    model = load_trained_model(config.adapter, config.model, config.base, config.dtype, config.device,
                               config.quantization).eval()
    tokenizer = trained_model_tokenizer(model, config.model, config.base)
    results = run_harness(model, tokenizer, harness, next(model.parameters()).device)
    table = scores_table(results)
    print(table)
    atomic_write_bytes(output, json.dumps(results, indent=1, default=str).encode())
    atomic_write_bytes(output.with_suffix(".md"), table.encode())
    print(f"results in {output} (table: {output.with_suffix('.md')})")
