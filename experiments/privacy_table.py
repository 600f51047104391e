"""Utility vs epsilon of client-level DP (DP-FedAvg) on the quickstart task.

Runs configs/quickstart.yaml (or --config) without DP, then with DP at each noise multiplier, all from the same
initial adapter; the clipping norm defaults to the median update norm of the run without DP. Prints the
global held-out loss, perplexity and next-token accuracy after the last round next to (epsilon, delta).

    python experiments/privacy_table.py [--noise 0.3 1 3] [--clip-norm C] [--json out.json] [any fedlit fit option]
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

from fedlit.cli import quiet_libraries
from fedlit.privacy import ClientDPConfig

METRICS = ("loss", "perplexity", "token_accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/privacy_table"))
    parser.add_argument("--noise", type=float, nargs="+", default=[0.3, 1.0, 3.0])
    parser.add_argument("--clip-norm", type=float)
    parser.add_argument("--delta", type=float, default=1e-3)
    parser.add_argument("--json", type=Path)
    args, options = parse_experiment_args(parser, "fit")
    quiet_libraries()
    if args.smoke:
        args.noise = [1.0]
    # the DP noise pinned (insecure_seed: a public seed, for a reproducible table; never for a real run)
    base, _, _ = setup_loop("fit", args.config, args.output_dir / "setup", "--insecure_seed", "0", *options)
    initial = base.module_factory().trainable_state_dict()

    plain = run("no-dp", base, initial, args.output_dir)
    norms = [r["update_norm"] for r in plain.history if r["split"] == "train"]
    clip = args.clip_norm or float(np.median(norms))
    rows = {"no DP": {"noise_multiplier": 0.0, "epsilon": float("inf"), **global_scores(plain, metrics=METRICS)}}
    rows["zero-shot (round 0)"] = {"noise_multiplier": float("nan"), "epsilon": 0.0,
                                   **global_scores(plain, 0, METRICS)}
    for sigma in args.noise:
        dp = ClientDPConfig(noise_multiplier=sigma, clip_norm=clip, delta=args.delta)
        loop = run(f"dp-{sigma:g}", base, initial, args.output_dir, privacy=dp)
        epsilon = loop.accountant.epsilon(loop.federation.rounds)
        rows[f"DP, sigma {sigma:g}"] = {"noise_multiplier": sigma, "epsilon": epsilon,
                                        **global_scores(loop, metrics=METRICS)}

    held_out = len(base.evaluation.global_val.val_dataset)
    table = Table(title=f"Client-level DP on {held_out} held-out examples: clip norm "
                        f"{clip:.3g} (median update norm {np.median(norms):.3g}), delta {args.delta:g}, "
                        f"{base.federation.rounds} rounds, every client every round")
    for column in ("setting", "epsilon", *METRICS):
        table.add_column(column)
    for name, scores in rows.items():
        table.add_row(name, f"{scores['epsilon']:.3g}", *(f"{scores[m]:.3f}" for m in METRICS))
    Console(width=140).print(table)
    if args.json:
        args.json.write_text(json.dumps({"clip_norm": clip, "update_norms": norms, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
