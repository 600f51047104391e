"""Ownership watermarks (FedIPR) on SmolLM2-135M: detection after federated training, robustness, cost, composition.

Every client of configs/fedhomo_watermark.yaml (the quickstart with watermarks) embeds its own key. Rows, each
scored with all four keys (mean and lowest sign-bit detection, mean trigger accuracy, keys verified at FPR 1e-6)
and the global held-out loss:

- no watermark: the same run without keys (the false-positive side: its adapter must be rejected), and with;
- attacks on the watermarked adapter by someone without the keys: N more fine-tuning steps on other plays, pruning
  the smallest 20/50% of each adapter tensor, Gaussian noise until held-out loss is 5% worse, one more FedAvg
  round of clients that do not embed;
- composition: the same run under secure aggregation, under client-level DP (clipping alone, clipping + noise);
- capacity: more sign bits per client, up to a quarter of all LoRA B entries each;
- utility on the which-play task (answer-set accuracy) with and without keys;
- FedOST: the owner's signature imprinted on the adapter blocks, on the plugged-in model after the clients tuned
  them (configs/fedost.yaml), and on the model before the imprint.

Results are kept in the JSON file as they come; a rerun skips rows already there.

    python experiments/watermark_table.py [--json outputs/watermark_table.json] [--only row ...] [fedlit fit options]
    python experiments/watermark_table.py --smoke --json OUT --output-dir DIR   (the tiny model: the test suite)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from shakespeare_task import run
from smoke import parse_experiment_args

from fedlit.cli import compose, fit_parser, quiet_libraries
from fedlit.client import Client
from fedlit.data import GLOBAL, DataConfig
from fedlit.models import ModelConfig, load_base_model, load_trained_model
from fedlit.payload import Payload
from fedlit.privacy import ClientDPConfig
from fedlit.secure import SecureAggregationConfig
from fedlit.server.checkpoint import newest_valid_checkpoint
from fedlit.server.loop import FederatedLoop
from fedlit.strategies import FedAvg
from fedlit.validation import validate
from fedlit.watermark import WatermarkKey, verify

OTHER_PLAYS = ["othello", "king_lear"]  # the attacker's fine-tuning text: none of the clients' plays


def compose_base(config: str, output_dir: Path, *options: str) -> tuple[FederatedLoop, DataConfig]:
    """The run ``config`` describes, and its data settings."""
    cli = fit_parser()
    parsed = cli.parse_args(["--config", config, "--output_dir", str(output_dir / "setup"), "--progress", "false",
                             "--loggers", "[]", *options])
    return compose("fit", parsed, cli), cli.instantiate(parsed).data


def keys_in(directory: Path) -> list[WatermarkKey]:
    return [WatermarkKey.load(p) for p in sorted(directory.glob("*.json"))]


def held_out_loss(base: FederatedLoop, payload: Payload) -> float:
    module = base.module_factory()
    module.load_trainable_state_dict(payload)
    return float(validate(module, {GLOBAL: base.evaluation.global_val}, base.trainer_kwargs)[GLOBAL]["loss"])


def scores(base: FederatedLoop, payload: Payload, keys: list[WatermarkKey], loss: float | None = None) -> dict:
    """The adapter's watermark scores under every key, and its global held-out loss."""
    module = base.module_factory()
    module.load_trainable_state_dict(payload)
    results = [verify(module.model, key) for key in keys]
    return {
        "sign_mean": float(np.mean([r.signature.rate for r in results])),
        "sign_min": float(min(r.signature.rate for r in results)),
        "trigger_mean": float(np.mean([r.trigger.rate if r.trigger else np.nan for r in results])),
        "trigger_base": float(np.mean([r.trigger.baseline if r.trigger else np.nan for r in results])),
        "verified": sum(r.verified for r in results),
        "sign_verified": sum(r.signature.verified for r in results),
        "trigger_verified": sum(r.trigger is not None and r.trigger.verified for r in results),
        "max_p_sign": float(max(r.signature.p_value for r in results)),
        "loss": held_out_loss(base, payload) if loss is None else loss,
    }


@dataclass
class Trained:
    """What the table needs of a finished run: its final global adapter, the global held-out row of its last
    round and its clients' update norms."""

    payload: Payload
    final: dict[str, Any]
    update_norms: list[float]


def trained_run(name: str, base: FederatedLoop, initial: Payload, out: Path, **changes: Any) -> Trained:
    """Run ``name`` (a :func:`shakespeare_task.run`) unless it finished before, and read it from its last
    checkpoint; a run left unfinished by an earlier attempt starts over."""
    directory = out / name
    if not (directory / "summary.json").is_file():
        shutil.rmtree(directory, ignore_errors=True)
        run(name, base, initial, out, **changes)
    _, state = newest_valid_checkpoint(directory / "checkpoints")
    history = json.loads(state["history"])
    final = [r for r in history if (r["client"], r["split"], r["round"]) == (GLOBAL, "val", state["round"])]
    norms = [float(r["update_norm"]) for r in history if r["split"] == "train" and r.get("update_norm") is not None]
    return Trained(state["global_payload"], final[0], norms)


def pruned(payload: Payload, share: float) -> Payload:
    """The smallest ``share`` of each tensor's entries (by magnitude) set to zero."""
    out = {}
    for name, tensor in payload.items():
        cut = torch.quantile(tensor.abs().flatten().float(), share)
        out[name] = torch.where(tensor.abs() <= cut, torch.zeros_like(tensor), tensor)
    return out


def noised(payload: Payload, std: float, seed: int = 0) -> Payload:
    generator = torch.Generator().manual_seed(seed)
    return {n: t + std * torch.randn(t.shape, generator=generator) for n, t in payload.items()}


def noise_for(base: FederatedLoop, payload: Payload, budget: float) -> tuple[float, float]:
    """The smallest noise std (doubling, then 5 bisection steps) whose held-out loss reaches ``budget``."""
    low, high = 0.0, 1e-3
    while (loss := held_out_loss(base, noised(payload, high))) < budget:
        low, high = high, high * 2
    for _ in range(5):
        middle = (low + high) / 2
        if held_out_loss(base, noised(payload, middle)) < budget:
            low = middle
        else:
            high, loss = middle, held_out_loss(base, noised(payload, middle))
    return high, loss


def attacker(base: FederatedLoop, data: DataConfig) -> Client:
    """One party holding other plays' text, in the clients' template and lengths."""
    other = dataclasses.replace(data, keep={"play": OTHER_PLAYS}, clients=None, partition="iid", num_clients=1,
                                train_examples_per_client=2000)
    (datamodule,) = base.federation.backend.federated_data(other, base.module_factory().tokenizer).clients.values()
    return Client("attacker", datamodule)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/fedhomo_watermark.yaml")
    parser.add_argument("--task-config", default="configs/task_which_play.yaml")
    parser.add_argument("--fedost-config", default="configs/fedost.yaml")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/watermark_table"))
    parser.add_argument("--json", type=Path, default=Path("outputs/watermark_table.json"))
    parser.add_argument("--only", nargs="*", help="run only these rows (names as in the JSON)")
    args, options = parse_experiment_args(parser, "fit")
    quiet_libraries()
    if args.smoke:  # two rows; the tiny model's LoRA holds a few hundred B entries
        args.only = args.only or ["watermarked", "no watermark"]
        options += ["--watermark.signature.bits=64", "--data.clients=null"]
    results: dict[str, Any] = json.loads(args.json.read_text()) if args.json.is_file() else {}
    out = args.output_dir
    key_dir = (out / "keys").resolve()
    # keys and every client secret (trigger swaps, imprinted magnitudes) pinned, so the table is reproducible
    base, data = compose_base(args.config, out, f"--watermark.key_dir={key_dir}", "--watermark.key_seed=0",
                              "--insecure_seed=0", *options)
    watermark = base.federation.watermark
    initial = base.module_factory().trainable_state_dict()

    def row(name: str, measure: Callable[[], dict]) -> None:
        if name in results or (args.only and name not in args.only):
            return
        began = time.perf_counter()
        results[name] = {**measure(), "seconds": round(time.perf_counter() - began)}
        print(name, results[name], flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))

    def trained(name: str, start: Payload | None = None, **changes: Any) -> Trained:
        changes = {"strategy": base.federation.strategy, "watermark": watermark, **changes}
        return trained_run(name, base, initial if start is None else start, out, **changes)

    def keys() -> list[WatermarkKey]:
        trained("marked")
        return keys_in(key_dir)

    def scored(name: str, start: Payload | None = None, key_dir: Path = key_dir, **changes: Any) -> dict:
        """Run ``name`` (after the watermarked run, which draws the keys) and score its adapter."""
        keys()
        done = trained(name, start, **changes)
        return scores(base, done.payload, keys_in(key_dir), done.final["loss"])

    row("watermarked", lambda: scored("marked"))
    row("no watermark", lambda: scored("twin", watermark=None))
    marked = lambda: trained("marked").payload  # noqa: E731
    for steps in (50, 200):
        row(f"+{steps} fine-tuning steps on other plays (no key)", lambda steps=steps: scored(
            f"finetune-{steps}", marked(), clients=[attacker(base, data)], rounds=1, watermark=None,
            strategy=FedAvg(), trainer={**base.federation.trainer, "max_steps": steps}))
    for share in (0.2, 0.5):
        row(f"prune smallest {share:.0%} per tensor", lambda share=share: scores(base, pruned(marked(), share),
                                                                                 keys()))

    def noise_row() -> dict:
        std, loss = noise_for(base, marked(), 1.05 * held_out_loss(base, marked()))
        return {**scores(base, noised(marked(), std), keys(), loss), "noise_std": std}

    row("Gaussian noise: held-out loss +5%", noise_row)
    row("+1 FedAvg round, clients without keys", lambda: scored("plus-round", marked(), rounds=1, watermark=None,
                                                                strategy=FedAvg()))
    row("secure aggregation", lambda: scored("secagg", secure_aggregation=SecureAggregationConfig()))
    clip = float(np.median(trained("twin", watermark=None).update_norms))
    for sigma in (0.0, 0.03):  # clipping alone; the mildest noise of docs/privacy.md's DP table
        row(f"client-level DP: clip {clip:.3g}, noise multiplier {sigma:g}", lambda sigma=sigma: scored(
            f"dp-{sigma:g}", privacy=ClientDPConfig(noise_multiplier=sigma, clip_norm=clip, delta=1e-3)))
    for bits in (2048, 92160):
        def capacity(bits: int = bits) -> dict:
            wide = dataclasses.replace(watermark, signature=dataclasses.replace(watermark.signature, bits=bits),
                                       key_dir=str((out / f"keys-{bits}").resolve()))
            return {**scored(f"bits-{bits}", key_dir=out / f"keys-{bits}", watermark=wide), "bits": bits}
        row(f"{bits} sign bits per client", capacity)

    task, _ = compose_base(args.task_config, out / "task", "--evaluation.generate_max_new_tokens=0",
                           *(option for option in options if not option.startswith("--watermark")))
    task_initial = task.module_factory().trainable_state_dict()

    def which_play(name: str, keys: str = "task-keys", **changes: Any) -> dict:
        """The which-play run ``name`` scored with the keys in ``keys`` (drawn by the watermarked run)."""
        task_watermark = dataclasses.replace(watermark, key_dir=str((out / "task-keys").resolve()))
        trained_run("task-marked", task, task_initial, out, strategy=task.federation.strategy,
                    watermark=task_watermark)
        found = trained_run(name, task, task_initial, out, **{"strategy": task.federation.strategy,
                                                              "watermark": task_watermark, **changes})
        marks = scores(task, found.payload, keys_in(out / keys), found.final["loss"])
        return {**marks, "choice_accuracy": found.final["choice_accuracy"]}

    row("which-play task: watermarked", lambda: which_play("task-marked"))
    row("which-play task: no watermark", lambda: which_play("task-twin", watermark=None))
    signature_only = dataclasses.replace(watermark, trigger=None, key_dir=str((out / "task-signature-keys").resolve()))
    row("which-play task: signature only", lambda: which_play("task-signature", "task-signature-keys",
                                                              watermark=signature_only))
    row("FedOST: owner's signature on the plugged-in model", lambda: fedost_owner(args.fedost_config, out))
    print_table(results)


def fedost_owner(config: str, out: Path) -> dict:
    """configs/fedost.yaml with the owner's signature imprinted on its adapter blocks' MLP weights; scored on the
    plugged-in model after the clients tuned the blocks, and on the model before the imprint."""
    cli = fit_parser("fedost")
    owner = {"signature": {"bits": 128, "gamma": 0.02, "parameters": "mlp"}, "trigger": None, "key_seed": 0}
    directory = out / "fedost"
    shutil.rmtree(directory, ignore_errors=True)
    parsed = cli.parse_args(["--config", config, "--output_dir", str(directory), "--progress", "false",
                             "--loggers", "[]", "--owner_watermark", json.dumps(owner)])
    report = compose("fedost", parsed, cli).fit()
    key = WatermarkKey.load(directory / "watermark_keys" / "owner.json")
    plugged = verify(load_trained_model(model=str(directory / "plugged_in")), key)
    before = verify(load_base_model(ModelConfig()), key)
    return {"sign_mean": plugged.signature.rate, "sign_min": plugged.signature.rate, "trigger_mean": float("nan"),
            "verified": int(plugged.verified), "keys": 1, "p_sign": plugged.signature.p_value,
            "sign_before_imprint": before.signature.rate, "verified_before_imprint": int(before.verified),
            "loss": report["plug_in"]["loss"], "choice_accuracy": report["plug_in"]["choice_accuracy"],
            "loss_full_zero_shot": report["full_zero_shot"]["loss"]}


def print_table(results: dict[str, Any]) -> None:
    table = Table(title="Ownership watermarks, 4 clients' keys (SmolLM2-135M)")
    for column in ("", "sign bits (mean / min)", "trigger acc.", "keys verified", "held-out loss"):
        table.add_column(column)
    for name, r in results.items():
        table.add_row(name, f"{r['sign_mean']:.1%} / {r['sign_min']:.1%}", f"{r['trigger_mean']:.1%}",
                      f"{r['verified']}/{r.get('keys', 4)}", f"{r['loss']:.3f}" + (f" (acc {r['choice_accuracy']:.3f})"
                                                                   if "choice_accuracy" in r else ""))
    Console().print(table)


if __name__ == "__main__":
    main()
