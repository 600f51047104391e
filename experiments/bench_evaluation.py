"""Evaluation cost: one validation pass of the quickstart's global adapter over held-out text, as the loop runs
it (``fedlit.validation.validate``: a server Trainer, the quickstart's precision), timed over repeats.

    python experiments/bench_evaluation.py [--examples 64] [--repeats 3] [--precision bf16-mixed] [--json out.json]
    python experiments/bench_evaluation.py --smoke        (the tiny model: the test suite)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from smoke import tiny_model

from fedlit.algorithms import fed_homo_llm
from fedlit.data import DataConfig
from fedlit.federation import Federation
from fedlit.models import ModelConfig
from fedlit.models.default import DEFAULT_MODEL
from fedlit.validation import validate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--json")
    parser.add_argument("--smoke", action="store_true", help="the tiny model, 4 examples, once (the test suite)")
    args = parser.parse_args()
    if args.smoke:
        args.examples, args.repeats, args.precision = 4, 1, "32-true"

    with tempfile.TemporaryDirectory() as tmp:
        loop = fed_homo_llm(
            model=ModelConfig(tiny_model(Path(tmp)) if args.smoke else DEFAULT_MODEL),
            data=DataConfig(clients=["hamlet", "macbeth", "romeo_and_juliet", "tempest"], train_examples_per_client=8,
                            val_examples_per_client=1, global_val_examples=args.examples, max_length=64),
            federation=Federation(output_dir=tmp, loggers=[], progress=False, trainer={"accelerator": "cpu"}),
        )
        module = loop.module_factory()
        parties = {"global": loop.evaluation.global_val}
        kwargs = {"accelerator": "cpu", "precision": args.precision}
        validate(module, parties, kwargs)  # warm-up
        seconds, metrics = [], {}
        for _ in range(args.repeats):
            began = time.perf_counter()
            metrics = validate(module, parties, kwargs)["global"]
            seconds.append(time.perf_counter() - began)
    result = {"examples": args.examples, "precision": args.precision, "median_seconds": statistics.median(seconds),
              "seconds": seconds, "metrics": {k: float(v) for k, v in metrics.items()}}
    table = Table(title=f"validation of {args.examples} examples, {args.precision}")
    for column in ("median s", "loss", "perplexity", "token accuracy"):
        table.add_column(column)
    table.add_row(f"{result['median_seconds']:.3f}", *(f"{metrics[k]:.5f}" for k in ("loss", "perplexity",
                                                                                       "token_accuracy")))
    Console().print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
