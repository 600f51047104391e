"""FedHeteroLLM: the mentee federated vs each client distilling it alone, same teachers and step budget.

Runs configs/fedhetero.yaml (or --config): the federation (FedAvg over the mentee's adapter), then each
client alone with its own teacher for the same rounds x steps, and prints the mentee's held-out loss,
perplexity and next-token accuracy on the server's split, with the untrained mentee (round 0) for reference.

    python experiments/fedhetero_table.py [--json out.json] [any fedlit fedhetero option]
    python experiments/fedhetero_table.py --smoke --output-dir DIR   (the tiny model: the test suite)
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

METRICS = ("loss", "perplexity", "token_accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/fedhetero.yaml")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/fedhetero_table"))
    parser.add_argument("--json", type=Path)
    args, options = parse_experiment_args(parser, "fedhetero")
    quiet_libraries()
    base, _, _ = setup_loop("fedhetero", args.config, args.output_dir / "setup", *options)
    initial = base.module_factory().trainable_state_dict()

    federated = run("federated", base, initial, args.output_dir)
    results = {"untrained mentee adapter (round 0)": global_scores(federated, 0, METRICS),
               "federated (FedAvg)": global_scores(federated, metrics=METRICS)}
    local = {cid: global_scores(run(f"local-{cid}", base, initial, args.output_dir, clients=[client]), metrics=METRICS)
             for cid, client in base.clients.items()}
    results["local-only (mean over clients)"] = {m: float(np.mean([s[m] for s in local.values()])) for m in METRICS}
    table = Table(title=f"FedHeteroLLM mentee on {len(base.evaluation.global_val.val_dataset)} held-out examples")
    for column in ("setting", *METRICS):
        table.add_column(column)
    for name, scores in results.items():
        table.add_row(name, *(f"{scores[m]:.3f}" for m in METRICS))
    Console(width=140).print(table)
    print("local-only per client:", local)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "local_per_client": local}, indent=2))


if __name__ == "__main__":
    main()
