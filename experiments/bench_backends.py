"""Backends and federation size: what parallel clients buy, and what idle clients cost the server.

1. The quickstart job widened to 8 clients (8 plays, all sampled each round): LocalBackend (one process, its
   torch threads) vs RayBackend (2 workers x 1 CPU). Wall time, peak RSS summed over the whole process tree
   (driver, Ray's own processes and workers, sampled every 0.2 s), peak PSS summed the same way (memory counted
   once: Ray's workers map one shared copy of the frozen base) and bytes moved (metrics.csv).
   Target: Ray <= 0.85x Local's wall time for these fit-dominated rounds; tree PSS <= 1.3x Local's.
2. Where the frozen base dominates memory (a random-initialised 1.7B Llama shape in bf16 with SmolLM2's tokenizer;
   ``--shape llama-3b`` or ``llama-8b`` for a bigger one; 4 clients x 1 step of one 32-token example, 1 round):
   LocalBackend vs RayBackend (2 workers), peak PSS of the process tree. Target: Ray <= 1.3x Local's (the workers
   and the driver map one copy of the base).
3. The LEAF federation (configs/leaf_shakespeare.yaml: one client per speaking role, 10 sampled per round,
   evaluation of 10 sampled clients) at 100 and at all ~660 clients: the server's own seconds per round (wall
   time of a round without evaluation minus its clients' fit time) and the driver's peak RSS.
   Target: flat in the number of idle clients.

Every configuration runs in a fresh process (``fedlit fit``), so memory figures do not mix.

    python experiments/bench_backends.py [--rounds 2] [--leaf-rounds 4] [--shape llama-3b] [--json out.json]
    python experiments/bench_backends.py --smoke       (the tiny shape, 1 round of each part but LEAF: the test suite)
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

CONFIGS = Path(__file__).parent.parent / "configs"
PLAYS = "[hamlet, macbeth, romeo_and_juliet, tempest, othello, lear, julius_caesar, twelfth_night]"
RAY = '{"class_path": "fedlit.backends.RayBackend", "init_args": {"num_workers": 2, "cpus_per_worker": 1}}'


def measure(command: list[str]) -> dict[str, float]:
    """Run ``command``; its wall time and the peaks of the RSS and of the PSS summed over it and all its descendants
    (PSS splits each shared page among the processes mapping it, so a sum of PSS counts memory once: a sum of RSS
    counts a page every process shares, libraries and Ray's shared object store included, once per process)."""
    began = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, pss_peak, driver_peak = 0, 0, 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, pss_peak, driver_peak
        root = psutil.Process(process.pid)
        while not stop.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                infos = [p.memory_full_info() for p in tree if p.is_running()]
                sizes = [info.rss for info in infos]
                peak, driver_peak = max(peak, sum(sizes)), max(driver_peak, sizes[0])
                pss_peak = max(pss_peak, sum(info.pss for info in infos))
            except psutil.Error:
                pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = process.communicate()
    stop.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{err[-2000:]}")
    return {"seconds": time.perf_counter() - began, "tree_rss_gib": peak / 2**30, "tree_pss_gib": pss_peak / 2**30,
            "driver_rss_gib": driver_peak / 2**30}


def metrics(output_dir: Path) -> list[dict[str, str]]:
    with open(output_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def backends(args: argparse.Namespace, workdir: Path) -> dict[str, dict[str, float]]:
    results = {}
    for name, extra in (("LocalBackend", []), ("RayBackend, 2 x 1 CPU", ["--backend", RAY])):
        output_dir = workdir / name.split(",")[0]
        command = [sys.executable, "-m", "fedlit.cli", "fit", "--config", str(CONFIGS / "quickstart.yaml"),
                   "--data.clients", PLAYS, "--strategy.init_args.clients_per_round", "8", "--rounds",
                   str(args.rounds), "--eval_every", str(args.rounds), "--progress", "false",
                   "--output_dir", str(output_dir), *extra]
        result = measure(command)
        rows = metrics(output_dir)
        result["bytes_moved"] = sum(int(r["bytes_sent"] or 0) + int(r["bytes_received"] or 0) for r in rows
                                    if r["split"] == "train")
        result["final_global_loss"] = float([r for r in rows if r["client"] == "global"][-1]["loss"])
        stamps = checkpoint_times(output_dir)
        result["fit_round_seconds"] = stamps[1] - stamps[0]  # round 1: fits and aggregation, no evaluation
        results[name] = result
        print(name, result, flush=True)
    return results


def shared_base(args: argparse.Namespace, workdir: Path) -> dict[str, dict[str, float]]:
    """Part 2: LocalBackend vs RayBackend on a base that dominates memory."""
    sys.path.insert(0, str(Path(__file__).parent))
    from random_models import random_model

    shape = "tiny" if args.smoke else args.shape
    model_dir = random_model(shape, workdir / shape)
    results = {}
    for name, extra in (("LocalBackend", []), ("RayBackend, 2 x 1 CPU", ["--backend", RAY])):
        output_dir = workdir / f"shared-{name.split(',')[0]}"
        command = [sys.executable, "-m", "fedlit.cli", "fit", "--config", str(CONFIGS / "quickstart.yaml"),
                   "--model.name_or_path", str(model_dir), "--model.dtype", "bfloat16",
                   "--data.clients", "[hamlet, macbeth, romeo_and_juliet, tempest]", "--data.max_length", "32",
                   "--data.batch_size", "1", "--data.train_examples_per_client", "1",
                   "--data.val_examples_per_client", "1", "--data.global_val_examples", "1",
                   "--strategy.init_args.clients_per_round", "4", "--trainer.max_steps", "1", "--rounds", "1",
                   "--progress", "false", "--output_dir", str(output_dir), *extra]
        results[name] = measure(command)
        print(name, results[name], flush=True)
    return results


def checkpoint_times(output_dir: Path) -> dict[int, float]:
    """When each round's checkpoint was written: the end of that round."""
    return {int(p.stem.split("-")[1]): p.stat().st_mtime for p in (output_dir / "checkpoints").glob("*.ckpt")}


def server_seconds(output_dir: Path, rounds: int) -> float:
    """Mean over rounds 2..rounds-1 (no evaluation) of the round's wall time minus its clients' fit time."""
    stamps = checkpoint_times(output_dir)
    rows = metrics(output_dir)
    overheads = []
    for server_round in range(2, rounds):
        fits = sum(float(r["seconds"]) for r in rows if r["split"] == "train" and int(r["round"]) == server_round)
        overheads.append(stamps[server_round] - stamps[server_round - 1] - fits)
    return sum(overheads) / len(overheads)


def leaf(args: argparse.Namespace, workdir: Path) -> dict[str, dict[str, float]]:
    results = {}
    for clients in ("100", "null"):
        output_dir = workdir / f"leaf-{clients}"
        command = [sys.executable, "-m", "fedlit.cli", "fit", "--config", str(CONFIGS / "leaf_shakespeare.yaml"),
                   "--data.num_clients", clients, "--rounds", str(args.leaf_rounds), "--eval_every",
                   str(args.leaf_rounds), "--trainer.max_steps", "1", "--progress", "false",
                   "--output_dir", str(output_dir)]
        result = measure(command)
        with open(output_dir / "partition.csv") as f:
            result["clients"] = sum(1 for _ in csv.DictReader(f))
        result["server_seconds_per_round"] = server_seconds(output_dir, args.leaf_rounds)
        results[f"LEAF, {result['clients']} clients"] = result
        print(clients, result, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--leaf-rounds", type=int, default=4)
    parser.add_argument("--skip-backends", action="store_true")
    parser.add_argument("--skip-leaf", action="store_true")
    parser.add_argument("--skip-shared-base", action="store_true")
    parser.add_argument("--shape", default="llama-1.7b", choices=["llama-1.7b", "llama-3b", "llama-8b"],
                        help="part 2's model shape (random weights, bf16)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--smoke", action="store_true", help="part 2 on the tiny shape only (the test suite)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        skip_backends, skip_leaf = args.skip_backends or args.smoke, args.skip_leaf or args.smoke
        report = {"shape": args.shape, "backends": {} if skip_backends else backends(args, Path(tmp)),
                  "shared_base": {} if args.skip_shared_base else shared_base(args, Path(tmp)),
                  "leaf": {} if skip_leaf else leaf(args, Path(tmp))}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    console = Console(width=140)
    if report["backends"]:
        table = Table(title=f"quickstart x 8 clients per round, {args.rounds} rounds, 2 CPU cores")
        for column in ("backend", "wall s", "vs Local", "fit round s", "vs Local", "tree RSS GiB", "tree PSS GiB",
                       "vs Local", "bytes moved", "final global loss"):
            table.add_column(column)
        local = report["backends"]["LocalBackend"]
        for name, r in report["backends"].items():
            fit = r["fit_round_seconds"]
            table.add_row(name, f"{r['seconds']:.0f}", f"{r['seconds'] / local['seconds']:.2f}x", f"{fit:.0f}",
                          f"{fit / local['fit_round_seconds']:.2f}x", f"{r['tree_rss_gib']:.2f}",
                          f"{r['tree_pss_gib']:.2f}", f"{r['tree_pss_gib'] / local['tree_pss_gib']:.2f}x",
                          f"{r['bytes_moved']:,}", f"{r['final_global_loss']:.4f}")
        console.print(table)
    if report["shared_base"]:
        table = Table(title=f"a base that dominates memory (random-initialised {args.shape} shape, bf16), 4 x 1 step")
        for column in ("backend", "wall s", "tree RSS GiB", "tree PSS GiB", "vs Local", "driver RSS GiB"):
            table.add_column(column)
        local = report["shared_base"]["LocalBackend"]
        for name, r in report["shared_base"].items():
            table.add_row(name, f"{r['seconds']:.0f}", f"{r['tree_rss_gib']:.2f}", f"{r['tree_pss_gib']:.2f}",
                          f"{r['tree_pss_gib'] / local['tree_pss_gib']:.2f}x", f"{r['driver_rss_gib']:.2f}")
        console.print(table)
    if not report["leaf"]:
        return
    table = Table(title="LEAF federation: the server's cost per round")
    for column in ("federation", "server s per round", "driver RSS GiB", "wall s"):
        table.add_column(column)
    for name, r in report["leaf"].items():
        table.add_row(name, f"{r['server_seconds_per_round']:.3f}", f"{r['driver_rss_gib']:.2f}", f"{r['seconds']:.0f}")
    console.print(table)


if __name__ == "__main__":
    main()
