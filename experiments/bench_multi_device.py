"""What a client fit on several devices costs beyond its steps: the same global batches on one device and on two
ranks (forked and spawned), every client every round, and the seconds of each client fit (its reply's ``seconds``).

A fit's ranks start with the fit and end with it (fedlit/multi_device.py), so a fit on two ranks pays their start
(fork: a copy-on-write process; spawn: a fresh interpreter that imports fedlit, Lightning and transformers and
unpickles the fit) and a gloo all-reduce per step. On a GPU machine the ranks would add devices; on the CPU they
share the same cores, so this measures the start cost, not a speed-up.

    python experiments/bench_multi_device.py [--config configs/quickstart.yaml] [--json out.json] \\
        [any fedlit fit option, e.g. --trainer.max_steps 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from shakespeare_task import setup_loop
from smoke import parse_experiment_args

from fedlit.cli import quiet_libraries

SETTINGS = {  # name -> trainer options (the per-rank batch halves on two ranks: the same global batch)
    "1 device": [],
    "2 ranks, forked": ["--trainer.devices", "2", "--trainer.strategy", "ddp_fork"],
    "2 ranks, spawned": ["--trainer.devices", "2", "--trainer.strategy", "ddp"],
}


def measure(name: str, config: str, output_dir: Path, options: list[str], batch: int) -> dict[str, float]:
    """One run of ``config`` in ``name``'s setting: its client fits' mean seconds and the run's wall time."""
    per_rank = batch // 2 if SETTINGS[name] else batch
    loop, _, parsed = setup_loop("fit", config, output_dir / name.replace(" ", "_").replace(",", ""), *options,
                                 *SETTINGS[name], "--data.batch_size", str(per_rank), "--eval_every", "1000")
    began = time.perf_counter()
    loop.fit()
    wall = time.perf_counter() - began
    fits = [float(row["seconds"]) for row in loop.history if row["split"] == "train"]
    return {"fit_s": statistics.mean(fits), "fits": len(fits), "steps": parsed.trainer["max_steps"],
            "global_batch": batch, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/bench_multi_device"))
    parser.add_argument("--global-batch", type=int, default=8, help="examples per step over all ranks")
    parser.add_argument("--json", type=Path)
    args, options = parse_experiment_args(parser, "fit")
    quiet_libraries()
    options = ["--trainer.precision", "32-true", *options]  # (bf16 on CPU ranks: no faster, and less exact)
    batch = args.global_batch
    if batch % 2:
        raise SystemExit(f"--global-batch {batch}: two ranks need an even global batch")
    results = {name: measure(name, args.config, args.output_dir, options, batch) for name in SETTINGS}
    single = results["1 device"]["fit_s"]
    table = Table(title=f"A client fit on one device and on two ranks (global batch {batch}, "
                        f"{results['1 device']['steps']} steps; {os.cpu_count()} CPU cores)")
    for column in ("setting", "fits", "s per fit", "beyond one device"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for name, found in results.items():
        table.add_row(name, str(found["fits"]), f"{found['fit_s']:.2f}", f"{found['fit_s'] - single:+.2f} s")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":  # (spawned ranks import this script again: it must not run the benchmark there)
    main()
