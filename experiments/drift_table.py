"""Drift correction on very non-IID clients: SCAFFOLD vs FedAvg vs FedProx on the which-play task.

configs/task_which_play.yaml with the plays spread over the four clients by Dirichlet alpha 0.1 (most clients see
mostly one play), 3 of 4 clients sampled per round, the same rounds, local steps and initial adapter for every
strategy; scored on the server's held-out split (answer-set accuracy over the four play names, generation exact
match, loss) after the last round, with the bytes each client moved per round (SCAFFOLD's control variates
travel beside the adapter).

    python experiments/drift_table.py [--alpha 0.1] [--mu 0.01] [--json out.json] [any fedlit fit option]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from shakespeare_task import global_scores, run, setup_loop
from smoke import parse_experiment_args

from fedlit.callbacks import FedProx
from fedlit.cli import quiet_libraries
from fedlit.strategies import FedAvg, Scaffold

METRICS = ("loss", "choice_accuracy", "exact_match")


def traffic(loop) -> float:
    """Mean bytes a client moved (received + sent) per fit."""
    rows = [r for r in loop.history if r["split"] == "train" and r.get("bytes_received") is not None]
    return float(np.mean([r["bytes_received"] + r["bytes_sent"] for r in rows]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/task_which_play.yaml")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/drift_table"))
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--mu", type=float, default=0.01, help="FedProx's proximal weight")
    parser.add_argument("--clients-per-round", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args, options = parse_experiment_args(parser, "fit")
    quiet_libraries()
    base, _, _ = setup_loop("fit", args.config, args.output_dir / "setup", "--data.alpha", str(args.alpha), *options)
    initial = base.module_factory().trainable_state_dict()
    sampled = min(args.clients_per_round, len(base.clients))
    runs = {
        "FedAvg": {"strategy": FedAvg(clients_per_round=sampled)},
        f"FedProx (mu {args.mu:g})": {"strategy": FedAvg(clients_per_round=sampled),
                                      "client_callbacks": [FedProx(args.mu)]},
        "SCAFFOLD": {"strategy": Scaffold(FedAvg(clients_per_round=sampled))},
    }
    results: dict[str, dict[str, float]] = {}
    for name, changes in runs.items():
        loop = run(name.split()[0].lower(), base, initial, args.output_dir, **changes)
        if not results:
            results["zero-shot (round 0)"] = global_scores(loop, 0, METRICS)
        results[name] = {**global_scores(loop, metrics=METRICS), "bytes_per_fit": traffic(loop)}
    table = Table(title=f"which-play, Dirichlet alpha {args.alpha:g}, {sampled} of {len(base.clients)} clients per "
                        f"round, {base.federation.rounds} rounds x {base.trainer_kwargs['max_steps']} steps")
    for column in ("strategy", "held-out loss", "answer-set accuracy", "exact match", "MB per client per round"):
        table.add_column(column)
    for name, scores in results.items():
        table.add_row(name, f"{scores['loss']:.4f}", f"{scores.get('choice_accuracy', float('nan')):.3f}",
                      f"{scores.get('exact_match', float('nan')):.3f}",
                      f"{scores['bytes_per_fit'] / 1e6:.2f}" if "bytes_per_fit" in scores else "")
    Console().print(table)
    if args.json is not None:
        args.json.write_text(json.dumps({"alpha": args.alpha, "clients_per_round": sampled, "results": results},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
