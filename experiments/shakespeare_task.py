""""Which play is this line from?": federated vs local-only vs centralised, same model and step budget.

Runs configs/task_which_play.yaml (or --config) five ways on the same data split and the same server
held-out split, and prints answer-set accuracy (the most likely of the four play names) and generation
exact match:

- zero-shot: the base model (the untrained adapter, round 0);
- local-only: each client trains alone for the same rounds x steps; the mean over clients;
- FedAvg and FedAdam: the federation, every client every round;
- centralised: one party holding the union of the clients' training data, trained for as many optimiser
  steps as all clients together (rounds x clients x steps).

    python experiments/shakespeare_task.py [--config configs/task_which_play.yaml] [--json out.json] \
        [any fedlit fit option, e.g. --trainer.max_steps 20]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from datasets import concatenate_datasets
from jsonargparse import ArgumentParser, Namespace
from rich.console import Console
from rich.table import Table
from smoke import parse_experiment_args

from fedlit.cli import compose, fit_parser, quiet_libraries
from fedlit.client import Client
from fedlit.data import GLOBAL, CausalLMDataModule
from fedlit.server.loop import FederatedLoop
from fedlit.strategies import FedAdam, FedAvg

METRICS = ("choice_accuracy", "exact_match")


def global_scores(loop: FederatedLoop, server_round: int | None = None,
                  metrics: tuple[str, ...] = METRICS, model: str | None = None) -> dict[str, float]:
    """``metrics`` of the global adapter (or of the server's own ``model``) after ``server_round`` (default:
    the last) on the server's held-out split (those the run measured)."""
    server_round = loop.federation.rounds if server_round is None else server_round
    (row,) = [r for r in loop.history if (r["client"], r["split"], r["round"], r.get("model"))
              == (GLOBAL, "val", server_round, model)]
    return {metric: float(row[metric]) for metric in metrics if metric in row}


def setup_loop(command: str, config_file: str, output_dir: Path,
               *options: str) -> tuple[FederatedLoop, ArgumentParser, Namespace]:
    """An experiment's base run of ``command``: ``config_file`` with ``options``, quiet, no loggers, its outputs in
    ``output_dir``; with the parser and the parsed config (to derive other runs from)."""
    cli = fit_parser(command)
    config = cli.parse_args(["--config", config_file, "--output_dir", str(output_dir), "--progress", "false",
                             "--loggers", "[]", *options])
    return compose(command, config, cli), cli, config


def run(name: str, base: FederatedLoop, initial, output_dir: Path, clients: list[Client] | None = None,
        **changes) -> FederatedLoop:
    """A loop sharing ``base``'s model, data and settings (FedAvg unless ``changes`` say otherwise, any
    :class:`~fedlit.federation.Federation` field), started from the same initial adapter."""
    federation = base.federation.replace(**{"strategy": FedAvg(), "output_dir": str(output_dir / name),
                                            "progress": False, **changes})
    loop = FederatedLoop(clients or list(base.clients.values()), base.module_factory, federation,
                         global_val=base.evaluation.global_val)
    base.module_factory().load_trainable_state_dict(initial)
    began = time.perf_counter()
    loop.fit()
    print(f"{name}: {global_scores(loop, metrics=('loss', *METRICS))} ({time.perf_counter() - began:.0f} s)",
          flush=True)
    return loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/task_which_play.yaml")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/shakespeare_task"))
    parser.add_argument("--fedadam-lr", type=float, default=3e-3)
    parser.add_argument("--json", type=Path)
    args, fit_options = parse_experiment_args(parser, "fit")
    quiet_libraries()

    base, _, _ = setup_loop("fit", args.config, args.output_dir / "setup", *fit_options)
    initial = base.module_factory().trainable_state_dict()
    steps = base.trainer_kwargs["max_steps"]

    results = {}
    fedavg = run("fedavg", base, initial, args.output_dir)
    results["zero-shot (base model)"] = global_scores(fedavg, 0)
    results["FedAvg"] = global_scores(fedavg)
    results[f"FedAdam (server_lr {args.fedadam_lr:g})"] = global_scores(
        run("fedadam", base, initial, args.output_dir, strategy=FedAdam(server_lr=args.fedadam_lr)))
    local = {cid: global_scores(run(f"local-{cid}", base, initial, args.output_dir, clients=[client]))
             for cid, client in base.clients.items()}
    results["local-only (mean over clients)"] = {
        metric: float(np.mean([scores[metric] for scores in local.values()])) for metric in METRICS}
    held_out = base.evaluation.global_val
    union = CausalLMDataModule(
        concatenate_datasets([c.datamodule.train_dataset for c in base.clients.values()]),
        held_out.val_dataset, held_out.collate.pad_token_id, held_out.batch_size,
    )
    central = run("centralised", base, initial, args.output_dir, clients=[Client("union", union)],
                  trainer={**base.federation.trainer, "max_steps": steps * len(base.clients)})
    results[f"centralised (union of data, {steps * len(base.clients)} steps per round)"] = global_scores(central)

    table = Table(title=f"Which play? {len(base.evaluation.global_val.val_dataset)} held-out lines "
                        f"({base.federation.rounds} rounds x {steps} steps per client)")
    for column in ("setting", *METRICS):
        table.add_column(column)
    for name, scores in results.items():
        table.add_row(name, *(f"{scores[metric]:.3f}" for metric in METRICS))
    Console().print(table)
    print("local-only per client:", local)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "local_per_client": local}, indent=2))


if __name__ == "__main__":
    main()
