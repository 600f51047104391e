"""A Flower deployment's overhead over LocalBackend, and whether it grows with the model.

Three parties (hamlet, macbeth, tempest), each a SuperNode over TLS with node authentication on this machine, each
with its model host (a detached actor on a Ray instance, ``model-host`` in its node config) or without one (every
message's ClientApp process builds the party's client again), against LocalBackend running the same job in one
process. Every run is a fresh ``fedlit fit`` / ``fedlit deploy`` process; the deployment runs with ``--debug`` so
that the ServerApp logs each request's round trip.

- **round time**: between successive round checkpoints (rounds 2 on: after the first round, whose time includes
  every load), and the first round's from the command's start;
- **per-round overhead**: the deployment's round time minus LocalBackend's, rounds 2 on;
- **per-message overhead**: a fit request's round trip at the server minus the slowest party's own fit time
  (``seconds`` in metrics.csv, measured inside the party): process start, transport and the host's dispatch.

Jobs: ``quickstart`` (configs/quickstart.yaml's model and settings on three of its plays, all sampled; target:
hosted round time <= 1.5x LocalBackend's) and ``light`` (1 step of 2 examples per fit: orchestration dominates)
on the default model and on a random-initialised Llama of 8x its parameters (``llama-1.1b`` of
experiments/random_models.py with SmolLM2's tokenizer: speed figures only). Target: the 8x model's hosted
per-round overhead within 20% of the default model's. On this machine the three parties share the cores: their
fits run at once (LocalBackend's one after another), each party with one torch thread per core it can have to
itself (``cpu_count // 3``, at least 1); the overhead figures say what orchestration costs, not what three
machines would gain.

    python experiments/bench_deployment.py [--rounds 3] [--json out.json]
    python experiments/bench_deployment.py --smoke     (the tiny shape, 2 rounds, hosted only: the test suite)
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests"))
from deployment import LocalDeployment  # noqa: E402 - the tests' localhost deployment
from random_models import random_model  # noqa: E402

PLAYS = ["hamlet", "macbeth", "tempest"]
BIN = Path(sys.executable).parent
QUICKSTART = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
LIGHT = {"trainer": {"max_steps": 1, "accelerator": "cpu"}, "data": {"batch_size": 2, "max_length": 32,
                                                                    "train_examples_per_client": 8,
                                                                    "val_examples_per_client": 2}}
ROUND_TRIP = re.compile(r"fedlit\.flower\.backend: fit: (\d+) replies in ([0-9.]+) s")


def job(name: str, model: str, rounds: int) -> dict:
    """The run's settings without any client's data path: quickstart's, on ``model``, ``light`` shrinking them."""
    settings = copy.deepcopy({key: value for key, value in QUICKSTART.items() if key not in ("output_dir", "data")})
    settings.update(rounds=rounds, progress=False, loggers=[])
    settings["model"]["name_or_path"] = model
    settings["strategy"] = {"class_path": "fedlit.strategies.FedAvg", "init_args": {"clients_per_round": 3}}
    data = {key: value for key, value in QUICKSTART["data"].items() if key not in ("clients", "source")}
    # the server of a deployment holds no data: the local run's global split is one record per client (as each party
    # holds one back), a negligible extra evaluation
    data["global_val_examples"] = len(PLAYS)
    if name == "light":  # (bf16 weights: the 8x model's copies, one per party and the server, fit in memory)
        settings["trainer"].update(LIGHT["trainer"])
        settings["model"]["dtype"] = "bfloat16"
        data.update(LIGHT["data"])
    settings["data"] = data
    settings["trainer"]["accelerator"] = "cpu"
    return settings


def round_times(output_dir: Path, started: float) -> list[float]:
    """Each round's seconds: the first from ``started``, the others between successive round checkpoints."""
    ends = sorted((int(p.stem.split("-")[1]), p.stat().st_mtime) for p in (output_dir / "checkpoints").glob("*.ckpt"))
    times = [mtime for number, mtime in ends if number >= 1]
    return [times[0] - started, *(b - a for a, b in zip(times, times[1:], strict=False))]


def fit_seconds(output_dir: Path) -> dict[int, float]:
    """The slowest client's own fit seconds, by round."""
    slowest: dict[int, float] = {}
    with open(output_dir / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row["split"] == "train" and row["seconds"]:
                r = int(row["round"])
                slowest[r] = max(slowest.get(r, 0.0), float(row["seconds"]))
    return slowest


def local_run(settings: dict, root: Path) -> dict:
    config = root / "local.yaml"
    data = {**settings["data"], "source": "shakespeare", "client_column": "play", "clients": PLAYS}
    config.write_text(yaml.safe_dump({**settings, "data": data, "output_dir": str(root / "local")}))
    started = time.time()
    done = subprocess.run([str(BIN / "fedlit"), "fit", "--config", str(config)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the local run failed ({done.returncode}): {done.stderr[-2000:]}")
    return {"wall_s": time.time() - started, "round_s": round_times(root / "local", started)}


def deployed_run(settings: dict, root: Path, hosted: bool) -> dict:
    parties = {}
    for play in PLAYS:
        parties[play] = root / f"{play}.yaml"
        parties[play].write_text(yaml.safe_dump({"data": {"source": "shakespeare", "client_column": "play",
                                                          "clients": [play], "global_val_examples": 1}}))
    # the parties share this machine's cores: one torch thread each (two threads each on 2 cores oversubscribe them,
    # and torch's spinning threads then make three concurrent fits 4x slower than the same fits one after another)
    deployment = LocalDeployment(root, parties, threads=max(1, (os.cpu_count() or 1) // len(PLAYS)))
    try:
        if hosted:
            deployment.start_ray_head()
        deployment.start()
        config = root / "server.yaml"
        config.write_text(yaml.safe_dump({**settings, "output_dir": str(root / "deployed")}))
        started = time.time()
        status = deployment.deploy(config, "--debug", "true").wait(timeout=3600)
        if status != 0:
            raise RuntimeError(f"the deployment failed ({status}): {deployment.log('deploy')[-2000:]}")
        wall = time.time() - started
        trips = [float(seconds) for _, seconds in ROUND_TRIP.findall(deployment.log("deploy"))]
    finally:
        deployment.stop()
    compute = fit_seconds(root / "deployed")
    return {"wall_s": wall, "round_s": round_times(root / "deployed", started),
            "fit_message_overhead_s": [trip - compute[r] for r, trip in enumerate(trips, 1) if r in compute]}


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def compare(name: str, model: str, label: str, rounds: int, workdir: Path, hosted_only: bool) -> dict:
    """LocalBackend, and the deployment with (and, unless ``hosted_only``, without) model hosts, on one job."""
    settings = job(name, model, rounds)
    print(f"{name} job on {label}: LocalBackend", flush=True)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        result = {"job": name, "model": label, "local": local_run(settings, Path(tmp))}
    for hosted in (True,) if hosted_only else (True, False):
        print(f"{name} job on {label}: deployed, {'with' if hosted else 'without'} model hosts", flush=True)
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            result["hosted" if hosted else "per_message"] = deployed = deployed_run(settings, Path(tmp), hosted)
        later = list(zip(deployed["round_s"][1:], result["local"]["round_s"][1:], strict=False))
        deployed["round_overhead_s"] = mean([d - loc for d, loc in later])
        deployed["round_ratio"] = mean([d / loc for d, loc in later])
    return result


def parameters(model: str) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="where the random model and runs go")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-deployment-"))
    if args.smoke:
        tiny = str(random_model("tiny", workdir / "tiny", torch.float32))
        results = [compare("light", tiny, "tiny (random init)", 2, workdir, hosted_only=True)]
    else:
        from fedlit.models.default import prepare_default_model

        default = str(prepare_default_model())
        big = str(random_model("llama-1.1b", workdir / "llama-1.1b"))
        ratio = parameters(big) / parameters(default)
        results = [compare("quickstart", default, "SmolLM2-135M", args.rounds, workdir, hosted_only=True),
                   compare("light", default, "SmolLM2-135M", args.rounds, workdir, hosted_only=False),
                   compare("light", big, f"Llama 1.1B ({ratio:.1f}x, random init)", args.rounds, workdir,
                           hosted_only=False)]
    table = Table(title="3-party Flower deployment vs LocalBackend (rounds 2 on; 2 CPU cores shared by all)")
    for column in ("job", "model", "deployment", "local round s", "round s", "round overhead s", "x local",
                   "fit message overhead s", "first round s (local)"):
        table.add_column(column)
    for result in results:
        for kind in ("hosted", "per_message"):
            if kind in result:
                run, local = result[kind], result["local"]
                table.add_row(result["job"], result["model"], "model host" if kind == "hosted" else "none",
                              f"{mean(local['round_s'][1:]):.1f}", f"{mean(run['round_s'][1:]):.1f}",
                              f"{run['round_overhead_s']:.1f}", f"{run['round_ratio']:.2f}",
                              f"{mean(run['fit_message_overhead_s']):.2f}",
                              f"{run['round_s'][0]:.0f} ({local['round_s'][0]:.0f})")
    Console().print(table)
    if args.json is not None:
        args.json.write_text(json.dumps({"cpu_count": torch.get_num_threads(), "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
