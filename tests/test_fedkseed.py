"""FedKSeed: the two-point estimate, replay of the seed history, what travels, and runs through the loop."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from peft import LoraConfig
from torch.func import functional_call

from fedlit.algorithms import fed_kseed
from fedlit.data import DataConfig
from fedlit.federation import Federation
from fedlit.lightning_modules.causal_lm import shifted_token_loss
from fedlit.lightning_modules.zeroth_order import COEFFICIENTS, ZerothOrderConfig, direction, replay
from fedlit.models import ModelConfig
from fedlit.payload import to_bytes
from fedlit.secure import SecureAggregationConfig
from fedlit.strategies import FedAvg

LORA = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1)


def build(model_dir: Path, data: Path, output_dir: Path, rounds: int = 2, trainable: str = "peft", steps: int = 3,
          federation: dict | None = None, **zeroth):
    return fed_kseed(
        model=ModelConfig(str(model_dir)),
        data=DataConfig(source=str(data), num_clients=3, val_examples_per_client=4, global_val_examples=6,
                        batch_size=4, max_length=32),
        trainable=trainable, peft=LORA, zeroth_order=ZerothOrderConfig(**{"seeds": 64, "lr": 1e-2, **zeroth}),
        federation=Federation(**{"strategy": FedAvg(clients_per_round=2), "rounds": rounds,
                                 "output_dir": str(output_dir), "loggers": [], "progress": False,
                                 "trainer": {"max_steps": steps, "accelerator": "cpu"}, **(federation or {})}),
    )


def batch_of(loop) -> dict[str, torch.Tensor]:
    return next(iter(next(iter(loop.clients.values())).datamodule.train_dataloader()))


def test_the_estimate_is_the_finite_difference_along_the_seeds_direction(tiny_model_dir, plays_jsonl, tmp_path):
    loop = build(tiny_model_dir, plays_jsonl, tmp_path / "run")
    module, batch, seed, scale = loop.module_factory(), batch_of(loop), 12345, 1e-3
    module.model.eval()
    params = dict(module.trainable_parameters())
    z = direction(params, seed)

    def loss_at(step: float) -> float:  # out of place, through torch.func: an independent path
        moved = {name: p.detach() + step * z[name] for name, p in params.items()}
        logits = functional_call(module.model, moved, kwargs={"input_ids": batch["input_ids"],
                                                              "attention_mask": batch["attention_mask"]}).logits
        return float(shifted_token_loss(logits, batch["labels"])[0])

    before = {name: p.detach().clone() for name, p in params.items()}
    gradient, _ = module.projected_gradient(batch, z)
    assert gradient == pytest.approx((loss_at(scale) - loss_at(-scale)) / (2 * scale), rel=1e-3, abs=1e-4)
    assert all(torch.equal(before[n], p) for n, p in params.items())  # the weights are left exactly as they were
    loss, _ = shifted_token_loss(module(batch), batch["labels"])  # and it estimates the directional derivative
    loss.backward()
    exact = sum(float((p.grad * z[n]).sum()) for n, p in params.items())
    assert gradient == pytest.approx(exact, rel=0.05, abs=1e-3)


def test_replaying_the_history_rebuilds_the_trained_weights_bit_for_bit(tiny_model_dir, plays_jsonl, tmp_path):
    loop = build(tiny_model_dir, plays_jsonl, tmp_path / "run")
    module = loop.module_factory()
    client = next(iter(loop.clients.values()))
    L.seed_everything(7)
    L.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0).fit(module, datamodule=client.datamodule)
    assert len(module.steps) == 5
    trained = {n: p.detach().clone() for n, p in module.trainable_parameters().items()}
    rebuilt = {n: t.clone() for n, t in module.initial.items()}
    replay(rebuilt, module.seeds, module.steps, module.config.lr)
    assert all(torch.equal(rebuilt[n], trained[n]) for n in trained)
    assert not all(torch.equal(module.initial[n], trained[n]) for n in trained)
    coefficients = module.trainable_state_dict()[COEFFICIENTS]  # the steps, summed per seed, are what travels
    for index, gradient in module.steps:
        coefficients[index] -= gradient
    assert torch.allclose(coefficients, torch.zeros_like(coefficients), atol=1e-12)


def test_what_travels_is_one_index_and_coefficient_per_local_step(tiny_model_dir, plays_jsonl, tmp_path):
    """A client sends the coefficients its steps changed (int32 index + float64 value each): O(local steps), the same
    for the adapter and for every weight of the model (31x more), however many seeds K there are."""
    adapter = build(tiny_model_dir, plays_jsonl, tmp_path / "a").module_factory()
    full = build(tiny_model_dir, plays_jsonl, tmp_path / "b", trainable="full").module_factory()
    sizes = [sum(p.numel() for p in m.trainable_parameters().values()) for m in (adapter, full)]
    assert sizes[1] > 20 * sizes[0]
    sent = {}
    for trainable in ("peft", "full"):
        for steps in (3, 9):
            loop = build(tiny_model_dir, plays_jsonl, tmp_path / f"{trainable}-{steps}", rounds=1, trainable=trainable,
                         steps=steps, seeds=1024)
            loop.fit()
            sent[trainable, steps] = {r["bytes_sent"] for r in loop.history if r["split"] == "train"}
    assert sent["peft", 3] == sent["full", 3] and sent["peft", 9] == sent["full", 9]
    header = len(to_bytes({"x#changed_indices": torch.zeros(0, dtype=torch.int32), "x#changed_values": torch.zeros(0)}))
    for steps in (3, 9):  # at most one entry per step (a seed drawn twice changes one entry)
        assert all(header < size <= header + 100 + 12 * steps for size in sent["peft", steps])
    assert max(sent["peft", 3]) < min(sent["peft", 9]) and max(sent["peft", 9]) < 1024 * 8 / 20


def test_a_fedkseed_run_logs_kilobytes_and_resumes_bit_identically(tiny_model_dir, plays_jsonl, tmp_path):
    whole = build(tiny_model_dir, plays_jsonl, tmp_path / "whole", rounds=2)
    whole.fit()
    with open(tmp_path / "whole" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    sent = [float(r["bytes_sent"]) for r in rows if r.get("bytes_sent") not in (None, "")]
    assert sent and max(sent) < 1024  # 64 float64 coefficients and the safetensors header
    build(tiny_model_dir, plays_jsonl, tmp_path / "split", rounds=1).fit()
    build(tiny_model_dir, plays_jsonl, tmp_path / "split", rounds=2).fit(resume=True)
    assert whole.global_payload[COEFFICIENTS].count_nonzero() > 0
    assert torch.equal(whole.global_payload[COEFFICIENTS], _coefficients(tmp_path / "split"))
    assert (tmp_path / "whole" / "adapter" / "adapter_model.safetensors").is_file()  # the rebuilt peft adapter


def _coefficients(run: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(run / "adapter" / "fedkseed_coefficients.safetensors")[COEFFICIENTS]


def test_fedkseed_pro_samples_the_seeds_that_mattered_more_often() -> None:
    uniform, pro = ZerothOrderConfig(seeds=8), ZerothOrderConfig(seeds=8, pro_alpha=3.0)
    coefficients = torch.tensor([0.0, 0.5, -2.0, 0.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    assert torch.equal(uniform.probabilities(coefficients), torch.full((8,), 1 / 8, dtype=torch.float64))
    assert torch.equal(pro.probabilities(torch.zeros(8)), torch.full((8,), 1 / 8, dtype=torch.float64))
    p = pro.probabilities(coefficients)
    expected = torch.exp(3.0 * coefficients.abs() / 2.0)
    assert torch.allclose(p, expected / expected.sum()) and int(p.argmax()) == 2


def test_a_client_whose_coefficients_turn_nan_is_excluded_under_the_fault_policy(tiny_model_dir, plays_jsonl,
                                                                                  tmp_path, monkeypatch):
    from fedlit.client.mods.adapter_extraction import AdapterExtraction

    extract, diverged = AdapterExtraction.on_fit_end, []

    def diverging(self, trainer, module):  # the first client to fit: its estimate blew up (every time it fits)
        extract(self, trainer, module)
        diverged.append(diverged[0] if diverged else self.client_id)
        if self.client_id == diverged[0]:
            self.update.payload[COEFFICIENTS][0] = float("nan")

    monkeypatch.setattr(AdapterExtraction, "on_fit_end", diverging)
    loop = build(tiny_model_dir, plays_jsonl, tmp_path / "run", rounds=2)
    loop.fit()
    excluded = [r for r in loop.history if r["split"] == "train" and r.get("excluded")]
    assert excluded and {r["client"] for r in excluded} == {diverged[0]}
    assert all("NaN" in r["excluded"] for r in excluded)
    assert torch.isfinite(loop.global_payload[COEFFICIENTS]).all() and loop.global_payload[COEFFICIENTS].any()


def test_under_secure_aggregation_the_masked_mean_of_coefficients_is_fedavgs(tiny_model_dir, plays_jsonl, tmp_path):
    every = {"strategy": FedAvg(clients_per_round=3)}
    clear = build(tiny_model_dir, plays_jsonl, tmp_path / "clear", federation=every).fit()
    masked = build(tiny_model_dir, plays_jsonl, tmp_path / "masked",
                   federation={**every, "secure_aggregation": SecureAggregationConfig()}).fit()
    assert clear[COEFFICIENTS].count_nonzero() > 0
    assert torch.allclose(masked[COEFFICIENTS], clear[COEFFICIENTS], atol=1e-6)  # fixed-point rounding only


def test_client_level_dp_clips_and_noises_the_coefficients(tiny_model_dir, plays_jsonl, tmp_path):
    """A clip far below any update: the released change times the denominator is the server's noise on the K
    coefficients (pinned here), plus at most the clipped updates."""
    from fedlit.privacy import ClientDPConfig, PartySecret

    privacy = ClientDPConfig(noise_multiplier=1.0, clip_norm=1e-9)
    loop = build(tiny_model_dir, plays_jsonl, tmp_path / "dp", rounds=1,
                 federation={"privacy": privacy, "insecure_seed": 2})
    released = loop.fit()[COEFFICIENTS].double() * 2
    noise = PartySecret.fresh("the server", insecure_seed=2).numpy("dp-noise", 1).normal(0.0, 1e-9, 64)
    assert torch.allclose(released, torch.from_numpy(noise), atol=3e-9)
    assert [r["epsilon"] for r in loop.history if r["split"] == "privacy"] == [loop.accountant.epsilon(1)]


def test_compression_and_non_finite_settings_are_refused_before_any_model_loads(tmp_path):
    from fedlit.compression import CompressionConfig

    with pytest.raises(ValueError, match="fedkseed: compression cannot apply"):
        build(Path("/nonexistent"), Path("/nonexistent"), tmp_path, federation={"compression": CompressionConfig()})
    for settings in ({"lr": float("nan")}, {"scale": float("inf")}):
        with pytest.raises(ValueError, match="zeroth_order: need seeds >= 1, lr > 0 and scale > 0"):
            ZerothOrderConfig(**settings)


@pytest.mark.long
def test_on_ray_a_fedkseed_run_is_bit_identical_to_local(tiny_model_dir, plays_jsonl, tmp_path):
    ray = pytest.importorskip("ray")
    from fedlit.backends import RayBackend

    local = build(tiny_model_dir, plays_jsonl, tmp_path / "local").fit()
    try:
        remote = build(tiny_model_dir, plays_jsonl, tmp_path / "ray",
                       federation={"backend": RayBackend(num_workers=2)}).fit()
    finally:
        ray.shutdown()
    assert torch.equal(remote[COEFFICIENTS], local[COEFFICIENTS])
