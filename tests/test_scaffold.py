"""SCAFFOLD: the client's corrected steps and new control variate against a hand computation on a quadratic, the
server's variate update by hand, FedAvg's result with full participation and one plain step, refusals, resume."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import with_federation
from peft import LoraConfig
from torch.utils.data import DataLoader, TensorDataset

from fedlit.algorithms import fed_homo_llm
from fedlit.backends.messages import FitRes
from fedlit.client.mods.drift_correction import DriftCorrection
from fedlit.client.round_store import RoundStore
from fedlit.data import DataConfig
from fedlit.lightning_modules import OptimizerConfig
from fedlit.models import ModelConfig
from fedlit.payload import Update, from_bytes, to_bytes
from fedlit.privacy import ClientDPConfig, ExampleDPConfig
from fedlit.secure import SecureAggregationConfig
from fedlit.strategies import FedAvg, Scaffold

A = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
B = torch.tensor([1.0, -1.0])
START = torch.tensor([0.5, -0.25])
LR = 0.05


class Quadratic(L.LightningModule):
    """f(w) = 0.5 * ||A w - b||^2, gradient A^T (A w - b): SCAFFOLD's steps can be written by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(START.clone())

    def trainable_parameters(self) -> OrderedDict[str, torch.nn.Parameter]:
        return OrderedDict(w=self.w)

    def training_step(self, batch, batch_idx):
        return 0.5 * ((A @ self.w - B) ** 2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


def test_a_client_corrects_every_step_and_moves_its_variate_as_option_two_says(tmp_path):
    control, own, steps = {"w": torch.tensor([0.3, -0.1])}, {"w": torch.tensor([-0.2, 0.4])}, 3
    store = RoundStore(tmp_path, "scaffold_control")
    mod = DriftCorrection("alpha", OrderedDict(control), OrderedDict(own), store, server_round=2)
    module = Quadratic()
    L.Trainer(max_steps=steps, callbacks=[mod], logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, accelerator="cpu").fit(module, DataLoader(TensorDataset(torch.zeros(steps)),
                                                                                    batch_size=1))
    w = START.clone()  # by hand: y <- y - lr (grad f(y) + c - c_i), then c_i+ = c_i - c + (x - y) / (K lr)
    for _ in range(steps):
        w = w - LR * (A.T @ (A @ w - B) + control["w"] - own["w"])
    assert torch.allclose(module.w.detach(), w, atol=1e-6)
    new_own = own["w"] - control["w"] + (START - w) / (steps * LR)
    reply = FitRes(b"", 0)
    mod.shape_reply(reply)  # (where the client answers: its variate is written there, once)
    assert torch.allclose(store.load(before=3)["w"], new_own, atol=1e-5)  # kept by the client, by round
    assert torch.allclose(from_bytes(reply.mods["scaffold"]["change"])["w"], new_own - own["w"], atol=1e-5)


def test_the_server_moves_its_variate_by_the_sampled_share_of_the_mean_change():
    strategy = Scaffold(FedAvg(clients_per_round=2))
    start = OrderedDict(w=torch.tensor([1.0, 2.0]))
    strategy.initial(start)
    sampled = strategy.configure_round(1, ["a", "b", "c", "d"], seed=0)
    changes = {"a": torch.tensor([0.4, -0.2]), "b": torch.tensor([0.0, 0.6])}
    updates = [Update(cid, OrderedDict(w=start["w"] + i + 1), 10 * (i + 1),
                      mods={"scaffold": {"change": to_bytes({"w": changes[cid]})}})
               for i, cid in enumerate(changes)]
    aggregated = strategy.aggregate(start, updates)
    assert len(sampled) == 2
    assert torch.allclose(aggregated["w"], (10 * (start["w"] + 1) + 20 * (start["w"] + 2)) / 30)  # FedAvg's
    assert torch.allclose(strategy.control["w"], 2 / 4 * (changes["a"] + changes["b"]) / 2)  # |S|/N mean change
    plan = strategy.fit_plan(masked=False)["scaffold"]
    assert torch.equal(from_bytes(plan["control"])["w"], strategy.control["w"])
    restored = Scaffold(FedAvg(clients_per_round=2))
    restored.load_state_dict(strategy.state_dict())  # the checkpoint holds the variate
    assert torch.equal(restored.control["w"], strategy.control["w"])
    with pytest.raises(ValueError, match="client 'a' sent no SCAFFOLD control variate change"):
        strategy.aggregate(start, [Update("a", start, 1)])
    damped = Scaffold(FedAvg(clients_per_round=2), server_lr=0.5)  # the global step: half of FedAvg's move
    damped.initial(start)
    damped.configure_round(1, ["a", "b", "c", "d"], seed=0)
    assert torch.allclose(damped.aggregate(start, updates)["w"], start["w"] + 0.5 * (aggregated["w"] - start["w"]))


def run(model_dir: Path, data: Path, output_dir: Path, strategy, steps: int, rounds: int = 2, **federation):
    """FedHomoLLM with plain SGD on three clients holding 8 training examples each (equal FedAvg weights)."""
    return fed_homo_llm(**with_federation(dict(
        model=ModelConfig(str(model_dir)),
        data=DataConfig(source=str(data), num_clients=3, train_examples_per_client=8, val_examples_per_client=2,
                        global_val_examples=3, batch_size=4, max_length=32),
        peft=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        optimizer=OptimizerConfig(lr=0.5, name="sgd"), strategy=strategy, rounds=rounds,
        output_dir=str(output_dir), loggers=[], progress=False,
        trainer_kwargs={"max_steps": steps, "accelerator": "cpu"}, **federation)))


def test_with_full_participation_and_one_plain_step_it_is_fedavg_and_with_more_steps_it_is_not(
        tiny_model_dir, plays_jsonl, tmp_path):
    """One SGD step per round from the same point: the clients' corrections c - c_i average to zero (c is the mean
    of the c_i), so the mean model is FedAvg's, round after round; with three steps the corrections act."""
    results = {}
    for name, strategy, steps in [("fedavg-1", FedAvg(), 1), ("scaffold-1", Scaffold(FedAvg()), 1),
                                  ("fedavg-3", FedAvg(), 3), ("scaffold-3", Scaffold(FedAvg()), 3)]:
        results[name] = run(tiny_model_dir, plays_jsonl, tmp_path / name, strategy, steps, rounds=3).fit()
    def gap(a: str, b: str) -> float:
        return max(float((results[a][n] - t).abs().max()) for n, t in results[b].items())

    assert gap("scaffold-1", "fedavg-1") < 1e-6  # float rounding only
    assert gap("scaffold-3", "fedavg-3") > 1000 * gap("scaffold-1", "fedavg-1") + 1e-5
    states = list((tmp_path / "scaffold-3" / "client_state").rglob("scaffold_control-*.safetensors"))
    assert len(states) >= 3  # each client's variate, in its own state directory


def test_a_resumed_scaffold_run_ends_bit_identical(tiny_model_dir, plays_jsonl, tmp_path):
    whole = run(tiny_model_dir, plays_jsonl, tmp_path / "whole", Scaffold(FedAvg(clients_per_round=2)), 2).fit()
    run(tiny_model_dir, plays_jsonl, tmp_path / "split", Scaffold(FedAvg(clients_per_round=2)), 2, rounds=1).fit()
    split = run(tiny_model_dir, plays_jsonl, tmp_path / "split", Scaffold(FedAvg(clients_per_round=2)), 2
                ).fit(resume=True)
    assert all(torch.equal(whole[n], split[n]) for n in whole)


@pytest.mark.parametrize("setting", [{"secure_aggregation": SecureAggregationConfig()},
                                     {"privacy": ClientDPConfig(noise_multiplier=1.0, clip_norm=1.0)},
                                     {"example_privacy": ExampleDPConfig(noise_multiplier=1.0, max_grad_norm=1.0)}],
                         ids=["secure_aggregation", "privacy", "example_privacy"])
def test_settings_the_variates_would_defeat_are_refused_by_name(setting, tiny_model_dir, plays_jsonl, tmp_path):
    with pytest.raises(ValueError, match=f"strategy Scaffold cannot run with {next(iter(setting))}: .*; leave"):
        run(tiny_model_dir, plays_jsonl, tmp_path / "run", Scaffold(), 1, **setting)


@pytest.mark.long
def test_on_ray_each_variate_stays_in_its_workers_state_and_the_run_equals_local(one_thread, tiny_model_dir,
                                                                                  plays_jsonl, tmp_path):
    ray = pytest.importorskip("ray")
    from fedlit.backends import RayBackend

    local = run(tiny_model_dir, plays_jsonl, tmp_path / "local", Scaffold(FedAvg(clients_per_round=2)), 2).fit()
    try:
        remote = run(tiny_model_dir, plays_jsonl, tmp_path / "ray", Scaffold(FedAvg(clients_per_round=2)), 2,
                     backend=RayBackend(num_workers=2)).fit()
    finally:
        ray.shutdown()
    assert all(torch.equal(remote[n], local[n]) for n in local)


def test_the_variates_count_in_each_rounds_bytes(tiny_model_dir, plays_jsonl, tmp_path):
    import csv

    sizes = {}
    for name, strategy in [("fedavg", FedAvg()), ("scaffold", Scaffold(FedAvg()))]:
        run(tiny_model_dir, plays_jsonl, tmp_path / name, strategy, 1, rounds=1).fit()
        with open(tmp_path / name / "metrics.csv") as f:
            sizes[name] = [(int(r["bytes_received"]), int(r["bytes_sent"])) for r in csv.DictReader(f)
                           if r["split"] == "train"]
    for (plain_in, plain_out), (in_, out) in zip(sizes["fedavg"], sizes["scaffold"], strict=True):
        assert in_ > 1.9 * plain_in and out > 1.5 * plain_out  # c down with the adapter, the change up with it
