"""Clients of different LoRA ranks: ranks {4, 8, 16, 32} across four clients (FlexLoRA's SVD redistribution and
HetLoRA's zero-padding) against every client at rank 8, on held-out loss and bytes.

configs/fedhomo_hetero_rank.yaml (four Shakespeare plays as four clients, the same data, rounds, local steps and
learning rate for every setting; every adapter scaled by lora_alpha / r = 2); scored on the server's held-out split
after the last round. Bytes: the adapter at a client's own rank (its factors' first r components: its share), and
what moved per fit here (each client's share, both ways).

    python experiments/hetero_rank_table.py [--json out.json] [any fedlit fit option]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from drift_table import traffic
from rich.console import Console
from rich.table import Table
from shakespeare_task import global_scores, run, setup_loop
from smoke import parse_experiment_args

from fedlit.cli import quiet_libraries
from fedlit.payload import Payload
from fedlit.strategies import FedAvg, HeteroRank
from fedlit.strategies.lora_factors import share_of_rank

INNER = "--strategy.init_args.strategy.init_args.clients_per_round"


def bytes_at_rank(payload: Payload, rank: int) -> int:
    """What an adapter of ``rank`` holds: each LoRA pair's first ``rank`` components (the rest of the payload as is)."""
    return sum(t.numel() * t.element_size() for t in share_of_rank(payload, rank).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/fedhomo_hetero_rank.yaml")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/hetero_rank_table"))
    parser.add_argument("--uniform-rank", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args, options = parse_experiment_args(parser, "fit")
    options = [INNER if option == "--strategy.init_args.clients_per_round" else option for option in options]
    quiet_libraries()
    base, _, _ = setup_loop("fit", args.config, args.output_dir / "setup", *options)
    configured: HeteroRank = base.federation.strategy
    sampled = configured.inner.clients_per_round
    ranks = {cid: configured.rank_of(cid) for cid in base.clients}
    initial = base.module_factory().trainable_state_dict()

    results: dict[str, dict[str, float]] = {}
    for aggregation, name in (("svd", "FlexLoRA (SVD)"), ("padding", "HetLoRA (zero-padding)")):
        strategy = HeteroRank(dict(configured.ranks), default_rank=configured.default_rank, aggregation=aggregation,
                              strategy=FedAvg(clients_per_round=sampled))
        loop = run(aggregation, base, initial, args.output_dir, strategy=strategy)
        results[f"ranks {sorted(set(ranks.values()))}, {name}"] = {
            **global_scores(loop, metrics=("loss", "perplexity")), "bytes_per_fit": traffic(loop),
            "adapter_bytes": float(np.mean([bytes_at_rank(initial, r) for r in ranks.values()]))}
    uniform = args.uniform_rank
    flat, _, _ = setup_loop("fit", args.config, args.output_dir / "setup-uniform", *options,
                            "--peft.init_args.r", str(uniform), "--peft.init_args.lora_alpha", str(2 * uniform))
    flat_initial = flat.module_factory().trainable_state_dict()
    loop = run("uniform", flat, flat_initial, args.output_dir, strategy=FedAvg(clients_per_round=sampled))
    results[f"every client at rank {uniform}, FedAvg"] = {
        **global_scores(loop, metrics=("loss", "perplexity")), "bytes_per_fit": traffic(loop),
        "adapter_bytes": float(bytes_at_rank(flat_initial, uniform))}

    steps = base.trainer_kwargs["max_steps"]
    table = Table(title=f"{len(base.clients)} clients of ranks {ranks}, {base.federation.rounds} rounds x {steps} "
                        "steps")
    for column in ("setting", "held-out loss", "perplexity", "adapter MB at the client's rank (mean)",
                   "MB moved per fit"):
        table.add_column(column)
    for name, row in results.items():
        table.add_row(name, f"{row['loss']:.4f}", f"{row['perplexity']:.2f}", f"{row['adapter_bytes'] / 1e6:.2f}",
                      f"{row['bytes_per_fit'] / 1e6:.2f}")
    Console().print(table)
    if args.json is not None:
        args.json.write_text(json.dumps({"ranks": ranks, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
