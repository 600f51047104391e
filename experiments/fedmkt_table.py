"""FedMKT on the which-play task: each client's SLM (zero-shot, standalone, LLM-to-SLM, FedMKT) and the server's
LLM (before, after), in the shape of the FedMKT paper's tables, at SmolLM2 scale on CPU.

Runs configs/fedmkt.yaml (or --config) three ways on one data split:

- standalone: every client tunes its own SLM on its private data only (``mode: llm_to_slm``, ``kd_weight: 0``);
- LLM-to-SLM: the LLM's knowledge flows to the clients only (``mode: llm_to_slm``);
- FedMKT: both ways (the config's mode).

Zero-shot is round 0 of the FedMKT run. Clients are scored on their own held-out split (answer-set accuracy over
the four play names, and loss), the LLM on the server's. It also reports the bytes a client sends per round and
how many public texts are lines of the server's held-out split.

    python experiments/fedmkt_table.py [--json out.json] [any fedlit fedmkt option]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from smoke import parse_experiment_args

from fedlit.cli import compose, fit_parser, quiet_libraries
from fedlit.data import GLOBAL
from fedlit.data.token_alignment import vocabulary, vocabulary_map
from fedlit.server.loop import FederatedLoop

METRICS = ("choice_accuracy", "loss")


def build(cli, options: list[str], output_dir: Path) -> FederatedLoop:
    config = cli.parse_args([*options, "--output_dir", str(output_dir), "--progress", "false", "--loggers", "[]"])
    return compose("fedmkt", config, cli)


def scores(loop: FederatedLoop, party: str, server_round: int, model: str = "") -> dict[str, float]:
    (row,) = [r for r in loop.history
              if (r["client"], r["split"], r["round"], r.get("model", "")) == (party, "val", server_round, model)]
    return {m: float(row[m]) for m in METRICS}


def overlap(loop: FederatedLoop) -> int:
    """Public texts whose line is in the server's held-out split (the LLM sees their labels while it learns)."""
    tokenizer = loop.strategy.llm.tokenizer
    held_out = [tokenizer.decode(e["input_ids"]) for e in loop.strategy.held_out[GLOBAL].val_dataset]
    lines = [text.split("?\n", 1)[1].rsplit("\nPlay:", 1)[0] for text in loop.strategy.public.texts]
    return sum(any(line in example for example in held_out) for line in lines)


def vocabulary_map_seconds(loop: FederatedLoop) -> dict[str, float]:
    """The time to map each distinct SLM vocabulary onto the LLM's and back, computed afresh (runs use the cache)."""
    llm = loop.strategy.llm.tokenizer
    timings = {}
    for client in loop.clients.values():
        slm = client.module_factory().tokenizer
        name = f"{len(vocabulary(slm))} <-> {len(vocabulary(llm))} entries"
        if name not in timings and vocabulary(slm) != vocabulary(llm):
            began = time.perf_counter()
            vocabulary_map(vocabulary(slm), vocabulary(llm))
            vocabulary_map(vocabulary(llm), vocabulary(slm))
            timings[name] = round(time.perf_counter() - began, 1)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/fedmkt.yaml")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/fedmkt_table"))
    parser.add_argument("--json", type=Path)
    args, options = parse_experiment_args(parser, "fedmkt")
    quiet_libraries()
    cli = fit_parser("fedmkt")
    options = ["--config", args.config, *options]
    settings = {"standalone": ["--mode", "llm_to_slm", "--loss.kd_weight", "0"],
                "LLM-to-SLM": ["--mode", "llm_to_slm"], "FedMKT": []}
    loops, seconds = {}, {}
    for name, extra in settings.items():
        began = time.perf_counter()
        loops[name] = build(cli, [*options, *extra], args.output_dir / name)
        loops[name].fit()
        seconds[name] = round(time.perf_counter() - began)
        print(f"{name}: {seconds[name]} s", flush=True)
    fedmkt = loops["FedMKT"]
    last = fedmkt.federation.rounds
    clients = {cid: client.module_factory().model.base_model.model.name_or_path
               for cid, client in fedmkt.clients.items()}
    slm = {cid: {"zero-shot": scores(fedmkt, cid, 0), **{name: scores(loop, cid, last) for name, loop in loops.items()}}
           for cid in clients}
    columns = ["zero-shot", *settings]
    slm["mean"] = {c: {m: float(np.mean([slm[cid][c][m] for cid in clients])) for m in METRICS} for c in columns}
    llm = {"before (round 0)": scores(fedmkt, GLOBAL, 0, "llm"), "after FedMKT": scores(fedmkt, GLOBAL, last, "llm")}
    sent = sorted({int(r["bytes_sent"]) for r in fedmkt.history if r["split"] == "train" and r.get("bytes_sent")})

    table = Table(title="client SLMs, answer-set accuracy / loss on each client's held-out split")
    for column in ("client", "model", *columns):
        table.add_column(column)
    for cid, row in slm.items():
        table.add_row(cid, clients.get(cid, ""),
                      *(f"{row[c]['choice_accuracy']:.3f} / {row[c]['loss']:.3f}" for c in columns))
    Console(width=160).print(table)
    table = Table(title=f"server LLM on {len(fedmkt.strategy.held_out[GLOBAL].val_dataset)} held-out examples")
    for column in ("setting", *METRICS):
        table.add_column(column)
    for name, values in llm.items():
        table.add_row(name, *(f"{values[m]:.3f}" for m in METRICS))
    Console(width=160).print(table)
    result = {"slm": slm, "llm": llm, "models": clients, "bytes_sent_per_client_round": sent, "seconds": seconds,
              "public_texts_in_server_held_out": overlap(fedmkt),
              "vocabulary_map_seconds": vocabulary_map_seconds(fedmkt)}
    print(json.dumps({k: v for k, v in result.items() if k not in ("slm", "llm")}))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
