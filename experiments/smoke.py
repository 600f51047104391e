"""What ``--smoke`` changes in an experiment script: a tiny random-initialised Llama (SmolLM2's tokenizer, 2 blocks
of width 16) in every model's place and the smallest run of the script's own config (2 clients, 1 round, 1 step,
a few examples of the real data), so the test suite runs every script end to end in seconds. Its numbers mean
nothing; that the script still runs is the point."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from random_models import random_model  # noqa: E402

SMALL_PUBLIC = {"steps": 1, "max_length": 32, "batch_size": 2}


def tiny_model(workdir: Path) -> str:
    return str(random_model("tiny", workdir / "tiny-llama", torch.float32))


def smoke_options(command: str, workdir: Path) -> list[str]:
    """Command-line options that shrink a run of ``command`` (``fit``, ``fedost``, ``fedhetero``, ``fedco``,
    ``fedmkt``) on its shipped config to a smoke test on the tiny model."""
    tiny = tiny_model(workdir)
    whole = json.dumps({"name_or_path": tiny, "keep_blocks": None})
    models = {
        "fit": ["--model.name_or_path", tiny],
        "fedost": ["--model.name_or_path", tiny, "--offsite.front", "0", "--offsite.back", "1"],
        "fedhetero": ["--mentee", whole, "--teachers", json.dumps({f"client-00{i}": json.loads(whole)
                                                                   for i in range(2)})],
        "fedco": ["--llm", whole, "--slm", whole,
                  *(option for part in ("slm_init", "server") for key, value in SMALL_PUBLIC.items()
                    for option in (f"--{part}.{key}", str(value)))],
        "fedmkt": ["--llm", whole, "--slm", whole, "--slms", "null", "--transfer.examples", "4",
                   "--transfer.server_steps", "1", "--transfer.batch_size", "2", "--transfer.public_batch_size", "2"],
    }[command]
    return [*models, "--rounds", "1", "--eval_every", "1", "--data.num_clients", "2",
            "--data.train_examples_per_client", "4", "--data.val_examples_per_client", "2",
            "--data.global_val_examples", "4", "--data.batch_size", "2", "--trainer.max_steps", "1",
            "--trainer.precision", "32-true", "--strategy.init_args.clients_per_round", "2"]


def parse_experiment_args(parser: argparse.ArgumentParser,
                          command: str) -> tuple[argparse.Namespace, list[str]]:
    """The script's own arguments and the fedlit options it passes on, with ``--smoke`` added: then the options
    start with :func:`smoke_options` (the script's ``--output-dir`` holds the tiny model too)."""
    parser.add_argument("--smoke", action="store_true", help="the tiny model, 2 clients, 1 round of 1 step: seconds "
                        "(the test suite)")
    args, options = parser.parse_known_args()
    if args.smoke:
        options = [*smoke_options(command, args.output_dir), *options]
    return args, options
