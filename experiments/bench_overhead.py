"""FederatedLoop overhead and memory.

1. Wall time of FederatedLoop rounds vs the same work written by hand: per round, the same client
   ``Trainer.fit`` calls (same seeds, same data), a hand-written FedAvg, and the same ``Trainer.validate``
   calls. The difference is what fedlit adds (safetensors payloads, checkpoints, metrics.csv, progress).
   Target: overhead <= 10%.
2. Peak RSS of a process that runs one round with 1 and with 10 simulated clients, each in a fresh process.
   Target: 10 clients <= 1.3x one client (one frozen base per process; a client costs an adapter).
3. ``--floor``: what fedlit adds with compute close to zero (a tiny random-initialised Llama with SmolLM2's
   tokenizer, 4 clients, LocalBackend): per client fit and per client evaluation, the seconds beyond the steps and
   batches themselves (the call's time at 1 step/batch minus the per-step time measured at ``--floor-steps``), and
   the server's own seconds per round (a round's wall time minus its client calls, rounds without evaluation).
   Targets on 2 CPU cores: <= 50 ms per fit and per evaluation, <= 100 ms per round.

    python experiments/bench_overhead.py [--rounds 2] [--steps 4] [--json out.json]
    python experiments/bench_overhead.py --floor [--json floor.json]     (--smoke: a quick run of --floor)
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from rich.console import Console
from rich.table import Table

from fedlit.algorithms import fed_homo_llm
from fedlit.client import CLIENT_TRAINER_DEFAULTS
from fedlit.data import DataConfig
from fedlit.federation import Federation
from fedlit.lightning_modules import OptimizerConfig
from fedlit.models import ModelConfig
from fedlit.seeds import client_seed
from fedlit.strategies import FedAvg, weighted_average

PLAYS = ["hamlet", "macbeth", "othello", "lear", "tempest", "julius_caesar", "twelfth_night",
         "as_you_like_it", "coriolanus", "richard_ii"]


def build_loop(args: argparse.Namespace, num_clients: int, output_dir: Path, seed: int = 0):
    return fed_homo_llm(
        model=ModelConfig(args.model),
        data=DataConfig(clients=PLAYS[:num_clients], train_examples_per_client=64, val_examples_per_client=8,
                        global_val_examples=16, max_length=args.max_length, batch_size=args.batch_size),
        optimizer=OptimizerConfig(lr=1e-3),
        federation=Federation(strategy=FedAvg(clients_per_round=num_clients), rounds=args.rounds,
                              output_dir=str(output_dir), loggers=[], progress=False, seed=seed,
                              trainer={"max_steps": args.steps, "accelerator": "cpu"}),
    )


def by_hand(loop) -> None:
    """The loop's rounds as plain Lightning: validate the start, then fit each client, average, validate."""
    module = loop.module_factory()
    global_payload = module.trainable_state_dict()
    evaluator = L.Trainer(**{**CLIENT_TRAINER_DEFAULTS, "limit_val_batches": None, "accelerator": "cpu"})
    splits = [c.datamodule for c in loop.clients.values()] + [loop.evaluation.global_val]

    def validate() -> None:
        for datamodule in splits:
            evaluator.validate(module, dataloaders=datamodule.val_dataloader(), verbose=False)

    validate()
    for server_round in range(1, loop.federation.rounds + 1):
        payloads, weights = [], []
        for client_id, client in loop.clients.items():
            L.seed_everything(client_seed(loop.federation.seed, server_round, client_id), workers=True, verbose=False)
            client_module = loop.module_factory()
            client_module.load_trainable_state_dict(global_payload)
            trainer = L.Trainer(**{**CLIENT_TRAINER_DEFAULTS, **loop.trainer_kwargs})
            trainer.fit(client_module, datamodule=client.datamodule)
            payloads.append(client_module.trainable_state_dict())
            weights.append(len(client.datamodule.train_dataset))
        global_payload = weighted_average(payloads, weights)
        module.load_trainable_state_dict(global_payload)
        validate()


def time_overhead(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        loop = build_loop(args, args.clients, Path(tmp) / "fedlit")
        loop.fit()  # warm-up: first-call costs (kernels, allocator) land here, not in either timing
        results = {"fedlit_s": [], "by_hand_s": []}
        for repeat in range(args.repeats):
            loop = build_loop(args, args.clients, Path(tmp) / f"fedlit-{repeat}")
            runs = {"by_hand_s": functools.partial(by_hand, loop), "fedlit_s": loop.fit}
            order = list(runs) if repeat % 2 == 0 else list(reversed(runs))  # alternate: no order bias
            for name in order:
                began = time.perf_counter()
                runs[name]()
                results[name].append(time.perf_counter() - began)
    fedlit_s, hand_s = min(results["fedlit_s"]), min(results["by_hand_s"])
    return {"fedlit_s": fedlit_s, "by_hand_s": hand_s, "overhead_pct": 100 * (fedlit_s / hand_s - 1)}


def peak_rss_child(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        build_loop(args, args.rss_child, Path(tmp)).fit()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    current_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
    print(json.dumps({"peak_rss_mb": peak_mb, "rss_after_mb": current_kb / 1024}))


def rss(args: argparse.Namespace, num_clients: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--rss-child", str(num_clients), "--rounds", "1", "--steps", str(args.steps),
           "--model", args.model, "--max-length", str(args.max_length), "--batch-size", str(args.batch_size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


class CallClock:
    """Times every client call (``ClientHost.answer``) and every round (``FederatedLoop._run_round``) of this
    process: LocalBackend runs both here, so a round's wall time minus its calls is the server's own."""

    def __init__(self) -> None:
        from fedlit.backends.base import ClientHost
        from fedlit.server.loop import FederatedLoop

        self.calls: list[tuple[str, float]] = []
        self.rounds: list[tuple[float, float]] = []  # (wall, seconds in client calls)
        answer, run_round = ClientHost.answer, FederatedLoop._run_round

        def timed_answer(host, method, client_id, request):
            began = time.perf_counter()
            try:
                return answer(host, method, client_id, request)
            finally:
                self.calls.append((method, time.perf_counter() - began))

        def timed_round(loop, *args):
            began, first = time.perf_counter(), len(self.calls)
            run_round(loop, *args)
            self.rounds.append((time.perf_counter() - began, sum(s for _, s in self.calls[first:])))

        ClientHost.answer, FederatedLoop._run_round = timed_answer, timed_round

    def reset(self) -> None:
        self.calls, self.rounds = [], []

    def median(self, method: str, skip: int = 0) -> float:
        """The median seconds of ``method`` calls, the first ``skip`` left out (warm-up)."""
        seconds = [s for m, s in self.calls if m == method][skip:]
        return float(statistics.median(seconds))


def floor(args: argparse.Namespace) -> dict[str, float]:
    """Per-fit, per-evaluation and per-round orchestration seconds at near-zero compute (see the docstring)."""
    from random_models import random_model

    clock = CallClock()
    clients, rounds = 4, args.floor_rounds
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = random_model("tiny", Path(tmp) / "tiny", torch.float32)

        def run(steps: int, val_batches: int, name: str) -> None:
            clock.reset()
            fed_homo_llm(
                model=ModelConfig(str(model_dir)),
                data=DataConfig(clients=PLAYS[:clients], train_examples_per_client=2 * steps,
                                val_examples_per_client=val_batches, global_val_examples=1, max_length=16,
                                batch_size=1),
                optimizer=OptimizerConfig(lr=1e-3),
                federation=Federation(strategy=FedAvg(clients_per_round=clients), rounds=rounds, eval_every=rounds,
                                      output_dir=str(Path(tmp) / name), loggers=[], progress=False,
                                      trainer={"max_steps": steps, "accelerator": "cpu"}),
            ).fit()

        if not args.smoke:  # first-call costs (allocator, kernels) land here, not in the timing
            run(1, 1, "warm-up")
        run(1, 1, "one")
        fit_1, evaluate_1 = clock.median("fit", skip=clients), clock.median("evaluate")
        server = statistics.median(wall - calls for wall, calls in clock.rounds[1:-1])  # (the last one evaluates)
        many = args.floor_steps
        run(many, many, "many")
        fit_n, evaluate_n = clock.median("fit", skip=clients), clock.median("evaluate")
    per_step, per_batch = (fit_n - fit_1) / (many - 1), (evaluate_n - evaluate_1) / (many - 1)
    return {"fit_s": fit_1, "step_s": per_step, "fit_overhead_s": fit_1 - per_step,
            "evaluate_s": evaluate_1, "batch_s": per_batch, "evaluate_overhead_s": evaluate_1 - per_batch,
            "server_s_per_round": server, "clients": clients}


def print_floor(results: dict[str, float]) -> None:
    table = Table(title=f"fedlit's orchestration floor (tiny random-initialised Llama, {results['clients']} clients, "
                        "LocalBackend, CPU)")
    for column in ("per", "seconds in all", "of which steps/batches", "fedlit adds", "target"):
        table.add_column(column)
    table.add_row("client fit", f"{results['fit_s'] * 1e3:.0f} ms", f"{results['step_s'] * 1e3:.0f} ms",
                  f"{results['fit_overhead_s'] * 1e3:.0f} ms", "<= 50 ms")
    table.add_row("client evaluation", f"{results['evaluate_s'] * 1e3:.0f} ms", f"{results['batch_s'] * 1e3:.0f} ms",
                  f"{results['evaluate_overhead_s'] * 1e3:.0f} ms", "<= 50 ms")
    table.add_row("round, server side", f"{results['server_s_per_round'] * 1e3:.0f} ms", "",
                  f"{results['server_s_per_round'] * 1e3:.0f} ms", "<= 100 ms")
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--floor", action="store_true", help="measure the orchestration floor (3.) only")
    parser.add_argument("--floor-rounds", type=int, default=6)
    parser.add_argument("--floor-steps", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="a quick --floor (the test suite runs it)")
    args = parser.parse_args()
    from fedlit.cli import quiet_libraries

    quiet_libraries()
    if args.rss_child:
        peak_rss_child(args)
        return
    if args.floor or args.smoke:
        if args.smoke:
            args.floor_rounds, args.floor_steps = 3, 2  # (the median round: the 2nd; the last one evaluates)
        results = floor(args)
        print_floor(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return
    timing = time_overhead(args)
    rss_1, rss_10 = rss(args, 1), rss(args, 10)
    results = {**timing, "rss_1_client": rss_1, "rss_10_clients": rss_10,
               "peak_rss_ratio": rss_10["peak_rss_mb"] / rss_1["peak_rss_mb"],
               "config": {k: v for k, v in vars(args).items() if k not in ("json", "rss_child")}}
    table = Table(title=f"fedlit overhead ({args.model}, {args.clients} clients x {args.rounds} rounds x "
                        f"{args.steps} steps)")
    for column in ("measure", "value", "target"):
        table.add_column(column)
    table.add_row("FederatedLoop wall time", f"{timing['fedlit_s']:.2f} s", "")
    table.add_row("same Trainer.fit/validate by hand", f"{timing['by_hand_s']:.2f} s", "")
    table.add_row("overhead", f"{timing['overhead_pct']:+.1f} %", "<= 10 %")
    for key, label in (("peak_rss_mb", "peak RSS"), ("rss_after_mb", "RSS after the round")):
        table.add_row(f"{label}, 1 client", f"{rss_1[key]:.0f} MB", "")
        table.add_row(f"{label}, 10 clients", f"{rss_10[key]:.0f} MB", "")
        table.add_row(f"{label}, ratio 10 / 1", f"{rss_10[key] / rss_1[key]:.2f}x", "<= 1.3x")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
