"""Federated DPO vs local-only DPO vs SFT on the chosen answers, on held-out preference pairs.

configs/fedpo.yaml (the built-in shakespeare-which-play pairs: "Which play is this line from?", the right play of
four chosen, another rejected; four clients, Dirichlet alpha 0.3 over the play), the same split, initial adapter,
rounds and local steps for every setting, scored on the server's held-out pairs after the last round:

- base model (round 0: the adapter at zero);
- federated DPO (FedAvg, every client every round);
- local-only DPO: each client trains alone for the same rounds x steps; the mean over clients;
- SFT, then nothing: FedAvg of supervised fine-tuning on prompt -> chosen answer, the same rounds x steps and batch
  (a DPO step reads each pair's two answers, twice: policy and reference), scored as the DPO runs are.

Preference accuracy: the share of held-out pairs whose chosen answer the model finds more likely than the rejected
one (comparable for every model); reward accuracy and margin: DPO's implicit reward beta * log(pi / pi_base).

    python experiments/preference_table.py [--config configs/fedpo.yaml] [--json out.json] [any fedlit fedpo option]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table
from shakespeare_task import global_scores, run, setup_loop
from smoke import parse_experiment_args

from fedlit.cli import compose, fit_parser, quiet_libraries
from fedlit.data import GLOBAL
from fedlit.validation import validate

METRICS = ("loss", "reward_accuracy", "reward_margin", "preference_accuracy")


def sft_options(cli, config) -> dict:
    """The DPO run's config as supervised fine-tuning on the chosen answers (same data, split and budget)."""
    plain = yaml.safe_load(cli.dump(config, skip_validation=True))
    plain.pop("dpo")
    data = plain["data"]
    data["response_template"] = data.pop("chosen_template")
    data.pop("rejected_template")
    return plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/fedpo.yaml")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/preference_table"))
    parser.add_argument("--json", type=Path)
    args, options = parse_experiment_args(parser, "fit")
    quiet_libraries()
    base, cli, config = setup_loop("fedpo", args.config, args.output_dir / "setup", *options)
    initial = base.module_factory().trainable_state_dict()

    results: dict[str, dict[str, float]] = {}
    federated = run("federated-dpo", base, initial, args.output_dir)
    results["base model (round 0)"] = global_scores(federated, 0, METRICS)
    results["federated DPO (FedAvg)"] = global_scores(federated, metrics=METRICS)
    local = {cid: global_scores(run(f"local-{cid}", base, initial, args.output_dir, clients=[client]),
                                metrics=METRICS) for cid, client in base.clients.items()}
    results["local-only DPO (mean over clients)"] = {
        metric: float(np.mean([scores[metric] for scores in local.values()])) for metric in METRICS}

    sft_cli = fit_parser("fit")
    sft_base = compose("fit", sft_cli.parse_object(sft_options(cli, config)), sft_cli)
    sft = run("sft", sft_base, sft_base.module_factory().trainable_state_dict(), args.output_dir)
    module = base.module_factory()
    module.load_trainable_state_dict(sft.global_payload, who="the SFT adapter")
    (scores,) = validate(module, {GLOBAL: base.evaluation.global_val}, base.trainer_kwargs).values()
    results["SFT on the chosen answers (FedAvg), then nothing"] = {m: float(scores[m]) for m in METRICS}

    steps = base.trainer_kwargs["max_steps"]
    table = Table(title=f"which-play preferences: {len(base.evaluation.global_val.val_dataset)} held-out pairs, "
                        f"{len(base.clients)} clients, {base.federation.rounds} rounds x {steps} steps")
    for column in ("setting", "DPO loss", "reward accuracy", "reward margin", "preference accuracy"):
        table.add_column(column)
    for name, row in results.items():
        table.add_row(name, *(f"{row[m]:.3f}" for m in METRICS))
    Console().print(table)
    print("local-only per client:", local)
    if args.json is not None:
        args.json.write_text(json.dumps({"results": results, "local_per_client": local}, indent=1) + "\n")


if __name__ == "__main__":
    main()
