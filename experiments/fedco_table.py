"""FedCoLLM: the clients' SLM (local-only, FedAvg only, FedCoLLM) and the server's LLM (before, after).

Runs configs/fedco.yaml (or --config) on one data split and one server held-out split:

- local-only: each client tunes the SLM adapter alone for the same rounds x steps (mean over clients);
- FedAvg only: the federation without the server's distillation (``server.steps: 0``);
- FedCoLLM: the federation with mutual distillation between the SLM and the LLM after every aggregation;
- with ``--init-ablation``, FedCoLLM again with the SLM as cut from the LLM (not distilled first);
- with ``--kd-control``, FedCoLLM again from the same distilled SLM with ``loss.kd_weight: 0``: both models
  then train on the public text's labels only, so what the LLM gains there is not the clients' knowledge.

All SLM settings start from the same SLM (distilled from the LLM by ``slm_init``) and the same adapter. It
prints held-out loss, perplexity and next-token accuracy.

    python experiments/fedco_table.py [--json out.json] [--init-ablation] [--kd-control] [any fedlit fedco option]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from shakespeare_task import global_scores, run
from smoke import parse_experiment_args

from fedlit.cli import compose, fit_parser, quiet_libraries

METRICS = ("loss", "perplexity", "token_accuracy")


def build(cli, options: list[str], output_dir: Path):
    config = cli.parse_args([*options, "--output_dir", str(output_dir), "--progress", "false", "--loggers", "[]"])
    return compose("fedco", config, cli)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/fedco.yaml")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/fedco_table"))
    parser.add_argument("--init-ablation", action="store_true")
    parser.add_argument("--kd-control", action="store_true")
    parser.add_argument("--json", type=Path)
    args, options = parse_experiment_args(parser, "fedco")
    quiet_libraries()
    cli = fit_parser("fedco")
    options = ["--config", args.config, *options]
    base = build(cli, options, args.output_dir / "fedcollm")
    initial = base.module_factory().trainable_state_dict()

    slm = {"SLM as given to clients (round 0)": None}
    local = {cid: global_scores(run(f"local-{cid}", base, initial, args.output_dir, clients=[client]), metrics=METRICS)
             for cid, client in base.clients.items()}
    slm["local-only (mean over clients)"] = {m: float(np.mean([s[m] for s in local.values()])) for m in METRICS}
    slm["FedAvg only"] = global_scores(run("fedavg", base, initial, args.output_dir), metrics=METRICS)
    base.module_factory().load_trainable_state_dict(initial)
    base.fit()
    slm["SLM as given to clients (round 0)"] = global_scores(base, 0, METRICS)
    slm["FedCoLLM"] = global_scores(base, metrics=METRICS)
    llm = {"before (round 0)": global_scores(base, 0, METRICS, model="llm"),
           "after FedCoLLM": global_scores(base, metrics=METRICS, model="llm")}
    if args.init_ablation:
        ablation = build(cli, [*options, "--slm_init.steps", "0"], args.output_dir / "no-init")
        ablation.fit()
        slm["SLM not distilled at start (round 0)"] = global_scores(ablation, 0, METRICS)
        slm["FedCoLLM, SLM not distilled at start"] = global_scores(ablation, metrics=METRICS)
    if args.kd_control:
        distilled = ["--slm.name_or_path", str(base.output_dir / "client_slm"),
                     "--slm.keep_blocks", "null", "--slm_init.steps", "0"]
        control = build(cli, [*options, *distilled, "--loss.kd_weight", "0"], args.output_dir / "kd-control")
        control.fit()
        slm["server step without KD (kd_weight 0)"] = global_scores(control, metrics=METRICS)
        llm["after, server step without KD (kd_weight 0)"] = global_scores(control, metrics=METRICS, model="llm")

    held_out = len(base.evaluation.global_val.val_dataset)
    for title, results in ((f"client SLM on {held_out} held-out examples", slm),
                           (f"server LLM on {held_out} held-out examples", llm)):
        table = Table(title=title)
        for column in ("setting", *METRICS):
            table.add_column(column)
        for name, scores in results.items():
            table.add_row(name, *(f"{scores[m]:.3f}" for m in METRICS))
        Console(width=140).print(table)
    print("local-only per client:", local)
    if args.json:
        args.json.write_text(json.dumps({"slm": slm, "llm": llm, "local_per_client": local}, indent=2))


if __name__ == "__main__":
    main()
