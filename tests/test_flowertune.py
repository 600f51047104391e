"""The FlowerTune LLM leaderboard's training setup as configs: each parses to the protocol's numbers, and a shrunken
copy (the tiny model, local alpaca-style data, one round, the harness on a local task) runs through the same code
path; the round learning rate follows the cosine by hand."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from fedlit.cli import fit_parser, main
from fedlit.strategies import CosineRoundLR, FedAvg, cosine_learning_rate

CONFIGS = Path(__file__).parent.parent / "configs" / "flowertune"
CLIENTS = {"general_nlp": (20, 0.1), "finance": (50, 0.1), "medical": (20, 0.1), "code": (10, 0.2)}


@pytest.mark.parametrize("challenge", sorted(CLIENTS))
def test_each_config_holds_the_leaderboard_protocol(challenge):
    parser = fit_parser()
    config = parser.parse_args(["--config", str(CONFIGS / f"{challenge}.yaml")])
    init = parser.instantiate(config)
    strategy = init.strategy
    assert isinstance(strategy, CosineRoundLR) and isinstance(strategy.inner, FedAvg)
    assert (strategy.lr_max, strategy.lr_min, strategy.rounds, config.rounds) == (5e-5, 1e-6, 200, 200)
    assert (config.data.num_clients, strategy.inner.clients_per_round) == CLIENTS[challenge]
    assert config.model.name_or_path == "mistralai/Mistral-7B-v0.3" and config.model.quantization.bits == 4
    assert config.model.gradient_checkpointing  # (as FlowerTune's template trains)
    peft = init.peft
    assert (peft.r, peft.lora_alpha) == (32, 64)
    assert (config.data.batch_size, config.data.max_length, config.trainer.max_steps) == (16, 512, 10)
    assert config.data.partition == "iid" and "/" in config.data.source  # a hub dataset


def alpaca_records(n: int = 48) -> list[dict[str, str | None]]:
    lines = ["To be or not to be.", "Fair is foul.", "Now is the winter.", "A horse! a horse!"]
    return [{"instruction": f"Complete line {i % 4}.", "input": None if i % 2 else "SPEAKER0",
             "output": lines[i % 4]} for i in range(n)]


@pytest.mark.parametrize("challenge", ["general_nlp", *(pytest.param(c, marks=pytest.mark.long)
                                                         for c in ("code", "finance", "medical"))])
def test_a_shrunken_copy_runs_through_the_same_code_path(challenge, tiny_model_dir, tmp_path):
    from test_harness import write_tasks

    source = tmp_path / "alpaca.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in alpaca_records()))
    task, _ = write_tasks(tmp_path / "tasks", ["a", "b", "c", "d"])
    main(["fit", "--config", str(CONFIGS / f"{challenge}.yaml"), "--model.name_or_path", str(tiny_model_dir),
          "--model.quantization", "null", "--model.dtype", "float32", "--data.source", str(source),
          "--data.num_clients", "2", "--data.val_examples_per_client", "2", "--data.global_val_examples", "4",
          "--data.max_length", "64", "--data.batch_size", "2", "--rounds", "1", "--strategy.init_args.rounds", "1",
          "--strategy.init_args.strategy.init_args.clients_per_round", "1.0", "--trainer.max_steps", "1",
          "--trainer.precision", "32-true", "--harness", json.dumps({"tasks": [str(task)], "batch_size": 2}),
          "--output_dir", str(tmp_path / "run"), "--progress", "false"])
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["round"] for r in rows if r["split"] == "harness"] == ["1"]
    assert len([r for r in rows if r["split"] == "train"]) == 2
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_the_round_learning_rate_is_the_cosine_and_reaches_the_optimiser(make_loop, tmp_path):
    rates = [cosine_learning_rate(t, 200, 5e-5, 1e-6) for t in (1, 101, 200)]
    assert rates[0] == 5e-5 and rates[1] == pytest.approx(1e-6 + 0.5 * (5e-5 - 1e-6))
    assert rates[2] == pytest.approx(1e-6 + 0.5 * (5e-5 - 1e-6) * (1 + math.cos(math.pi * 199 / 200)))
    seen = []

    class Spy:
        def on_train_batch_start(self, trainer, *_):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    from lightning.pytorch.callbacks import Callback

    spy = type("LrSpy", (Callback,), {"on_train_batch_start": Spy.on_train_batch_start})()
    make_loop(rounds=2, strategy=CosineRoundLR(1e-2, 1e-3, 2, FedAvg(clients_per_round=1)),
              client_callbacks=[spy], output_dir=tmp_path / "run").fit()
    per_round = seen[: len(seen) // 2], seen[len(seen) // 2:]
    assert all(lr == pytest.approx(1e-2) for lr in per_round[0])
    assert all(lr == pytest.approx(cosine_learning_rate(2, 2, 1e-2, 1e-3)) for lr in per_round[1])
