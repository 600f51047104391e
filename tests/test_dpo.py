"""Federated DPO: the loss and its gradient against a hand computation, the reference policy against the base model
loaded on its own, a short run that learns the preferences, bad preference files named by row, and the run under
secure aggregation, client-level DP, compression, a k-bit base, Ray and resume."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import preference_records, with_federation
from peft import LoraConfig
from transformers import AutoModelForCausalLM

from fedlit.algorithms import fed_dpo
from fedlit.compression import CompressionConfig
from fedlit.data import GLOBAL, PreferenceDataConfig
from fedlit.lightning_modules import OptimizerConfig
from fedlit.lightning_modules.preference_optimization import DPOConfig, DPOModule, sequence_log_probs
from fedlit.models import ModelConfig, QuantizationConfig
from fedlit.privacy import ClientDPConfig, ExampleDPConfig
from fedlit.secure import SecureAggregationConfig
from fedlit.strategies import FedAvg


def dpo_run(model_dir: Path, source: Path, output_dir: Path, **overrides):
    kwargs = {
        "model": ModelConfig(str(model_dir)),
        "data": PreferenceDataConfig(source=str(source), num_clients=3, val_examples_per_client=4,
                                     global_val_examples=12, batch_size=4, max_length=32),
        "peft": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        "optimizer": OptimizerConfig(lr=2e-2),
        "dpo": DPOConfig(beta=0.5),
        "strategy": FedAvg(),
        "rounds": 2,
        "output_dir": str(output_dir),
        "loggers": [],
        "progress": False,
        "trainer_kwargs": {"max_steps": 3, "accelerator": "cpu"},
        **overrides,
    }
    return fed_dpo(**with_federation(kwargs))


def global_rows(output_dir: Path) -> list[dict[str, str]]:
    with open(output_dir / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r["client"] == GLOBAL and r["split"] == "val"]


def perturbed_module(loop) -> DPOModule:
    """The run's module with its LoRA factors moved off their initial zero, so policy and reference differ."""
    module = loop.module_factory()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in module.trainable_parameters().values():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return module


def hand_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sequence, token by token: sum of log softmax(logits[t])[labels[t + 1]] over labelled positions."""
    totals = []
    for row_logits, row_labels in zip(logits, labels, strict=True):
        total = torch.zeros((), dtype=torch.float32)
        for t in range(len(row_labels) - 1):
            if row_labels[t + 1] != -100:
                total = total + torch.log_softmax(row_logits[t].float(), -1)[row_labels[t + 1]]
        totals.append(total)
    return torch.stack(totals)


def test_the_loss_and_its_gradient_match_a_hand_computation(tiny_model_dir, preferences_jsonl, tmp_path):
    loop = dpo_run(tiny_model_dir, preferences_jsonl, tmp_path / "run", dpo=DPOConfig(beta=0.5, label_smoothing=0.1))
    module = perturbed_module(loop)
    batch = next(iter(loop.clients["alpha"].datamodule.train_dataloader()))
    pairs = len(batch["input_ids"]) // 2
    assert pairs == 4 and batch["input_ids"].shape[0] == 2 * pairs

    losses, measures = module.pair_measures(batch)
    loss = losses.mean()
    params = list(module.trainable_parameters().values())
    grads = torch.autograd.grad(loss, params)

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        reference = hand_log_probs(base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                   batch["labels"])
    policy = hand_log_probs(module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                            batch["labels"])
    beta, eps = 0.5, 0.1
    hand = []
    for i in range(pairs):
        h = (policy[i] - reference[i]) - (policy[pairs + i] - reference[pairs + i])
        sigma = 1 / (1 + torch.exp(-beta * h))
        hand.append(-(1 - eps) * torch.log(sigma) - eps * torch.log(1 - sigma))
    hand_loss = torch.stack(hand).mean()
    hand_grads = torch.autograd.grad(hand_loss, params)

    assert torch.allclose(loss, hand_loss, atol=1e-5)
    assert all(torch.allclose(g, h, atol=1e-5, rtol=1e-4) for g, h in zip(grads, hand_grads, strict=True))
    assert any(g.abs().max() > 1e-4 for g in grads)
    rewards = beta * (policy.detach() - reference)
    assert torch.allclose(measures["reward_margin"], rewards[:pairs] - rewards[pairs:], atol=1e-5)
    assert torch.equal(measures["reward_accuracy"], (rewards[:pairs] > rewards[pairs:]).float())
    assert torch.allclose(measures["logp_chosen"], policy[:pairs].detach(), atol=1e-5)
    assert torch.equal(measures["preference_accuracy"], (policy[:pairs] > policy[pairs:]).float())


def test_the_reference_is_the_base_model_with_the_adapter_removed(tiny_model_dir, preferences_jsonl, tmp_path):
    loop = dpo_run(tiny_model_dir, preferences_jsonl, tmp_path / "run")
    module = perturbed_module(loop)
    batch = next(iter(loop.evaluation.global_val.val_dataloader()))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        expected = sequence_log_probs(base(input_ids=batch["input_ids"],
                                           attention_mask=batch["attention_mask"]).logits, batch["labels"])
        policy = sequence_log_probs(module(batch), batch["labels"])
    assert torch.allclose(module.reference_log_probs(batch), expected, atol=1e-6)
    assert (policy - expected).abs().max() > 1e-2  # the adapter is on again after the reference pass


def test_two_rounds_learn_the_preferences(tiny_model_dir, preferences_jsonl, tmp_path):
    loop = dpo_run(tiny_model_dir, preferences_jsonl, tmp_path / "run")
    loop.fit()
    first, *_, last = global_rows(tmp_path / "run")
    assert float(first["loss"]) == pytest.approx(math.log(2), abs=1e-6)  # adapter at zero: policy == reference
    assert float(first["reward_accuracy"]) == 0.0  # (ties count as misses)
    assert float(last["reward_accuracy"]) >= 0.75 and float(last["reward_margin"]) > 0
    assert float(last["loss"]) < math.log(2) - 0.02
    assert float(last["preference_accuracy"]) > float(first["preference_accuracy"])
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_a_resumed_run_ends_bit_identical(tiny_model_dir, preferences_jsonl, tmp_path):
    whole = dpo_run(tiny_model_dir, preferences_jsonl, tmp_path / "whole").fit()
    dpo_run(tiny_model_dir, preferences_jsonl, tmp_path / "split", rounds=1).fit()
    resumed = dpo_run(tiny_model_dir, preferences_jsonl, tmp_path / "split").fit(resume=True)
    assert all(torch.equal(whole[n], resumed[n]) for n in whole)


def test_under_secure_aggregation_the_round_is_the_plain_one_within_the_bound(tiny_model_dir, preferences_jsonl,
                                                                              tmp_path):
    plain = dpo_run(tiny_model_dir, preferences_jsonl, tmp_path / "plain", rounds=1).fit()
    config = SecureAggregationConfig()
    loop = dpo_run(tiny_model_dir, preferences_jsonl, tmp_path / "masked", rounds=1, secure_aggregation=config)
    masked = loop.fit()
    bound = config.error_bound(3, sum(len(c.datamodule.train_dataset) for c in loop.clients.values()))
    assert all((masked[n] - plain[n]).abs().max() <= bound + 1e-6 for n in plain)
    assert any(not torch.equal(masked[n], plain[n]) for n in plain)


@pytest.mark.parametrize("setting", [
    {"privacy": ClientDPConfig(noise_multiplier=0.3, clip_norm=1.0)},
    {"compression": CompressionConfig(bits=8)},
    {"model": "nf4"},
], ids=["client_dp", "compression", "nf4_base"])
def test_it_trains_with_client_dp_compression_and_a_kbit_base(setting, tiny_model_dir, preferences_jsonl, tmp_path):
    if setting.get("model") == "nf4":
        setting = {"model": ModelConfig(str(tiny_model_dir), quantization=QuantizationConfig(
            bits=4, quant_type="nf4", compute_dtype="float32"))}
    loop = dpo_run(tiny_model_dir, preferences_jsonl, tmp_path / "run", **setting)
    loop.fit()
    rows = global_rows(tmp_path / "run")
    assert float(rows[-1]["reward_margin"]) > 0 and float(rows[-1]["loss"]) < math.log(2)
    if "privacy" in setting:
        assert any(r["epsilon"] for r in csv.DictReader(open(tmp_path / "run" / "metrics.csv")))  # noqa: SIM115


def test_dp_sgd_is_refused_by_name(tiny_model_dir, preferences_jsonl, tmp_path):
    with pytest.raises(ValueError, match="a DPO example is a pair of sequences: use privacy"):
        dpo_run(tiny_model_dir, preferences_jsonl, tmp_path / "run",
                example_privacy=ExampleDPConfig(noise_multiplier=1.0, max_grad_norm=1.0))


def test_a_record_missing_chosen_is_named_by_file_row_and_field(tiny_model_dir, tmp_path, capsys):
    from fedlit.cli import main

    records = preference_records()
    del records[6]["chosen"]
    source = tmp_path / "broken.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(SystemExit) as exit_info:
        main(["fedpo", "--model.name_or_path", str(tiny_model_dir), "--data.source", str(source),
              "--output_dir", str(tmp_path / "run"), "--progress", "false"])
    assert exit_info.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"{source} row 7 has no 'chosen'" in line


def test_a_template_for_plain_text_is_refused_for_preferences():
    with pytest.raises(ValueError, match="data.template does not apply to preference data"):
        PreferenceDataConfig(template="{text}")
    with pytest.raises(ValueError, match="data.packing does not apply"):
        PreferenceDataConfig(packing=True)
    with pytest.raises(ValueError, match="dpo.beta must be a finite number > 0"):
        DPOConfig(beta=0)


def test_column_names_are_the_templates_and_long_prompts_lose_their_start(tiny_model_dir, tmp_path):
    from datasets import Dataset

    from fedlit.data.preferences import tokenize_preferences
    from fedlit.models import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(str(tiny_model_dir)))
    fields = Dataset.from_list([{"prompt": "To be or not to be, that is the question.", "chosen": " alpha",
                                 "rejected": " beta gamma"}])
    rejected = tokenizer(" beta gamma", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prompt = tokenizer(fields[0]["prompt"], add_special_tokens=False)["input_ids"]
    context = 3  # the longer answer leaves room for the prompt's last 3 tokens, the same before both answers
    (pair,) = tokenize_preferences(fields, tokenizer, max_length=len(rejected) + context)
    assert pair["rejected_input_ids"] == prompt[-context:] + rejected
    assert pair["chosen_input_ids"][:context] == prompt[-context:]
    assert pair["chosen_labels"][:context] == [-100] * context and pair["chosen_labels"][-1] == tokenizer.eos_token_id
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text("".join(json.dumps({"play": r["play"], "q": r["prompt"], "good": r["chosen"],
                                           "bad": r["rejected"]}) + "\n" for r in preference_records()))
    loop = dpo_run(tiny_model_dir, renamed, tmp_path / "run", data=PreferenceDataConfig(
        source=str(renamed), prompt_template="{q}", chosen_template="{good}", rejected_template="{bad}",
        num_clients=3, val_examples_per_client=4, global_val_examples=12, batch_size=4, max_length=32))
    assert sorted(loop.clients) == ["alpha", "beta", "gamma"]


@pytest.mark.long
def test_on_ray_the_run_equals_local(one_thread, tiny_model_dir, preferences_jsonl, tmp_path):
    ray = pytest.importorskip("ray")
    from fedlit.backends import RayBackend

    local = dpo_run(tiny_model_dir, preferences_jsonl, tmp_path / "local").fit()
    try:
        remote = dpo_run(tiny_model_dir, preferences_jsonl, tmp_path / "ray",
                         backend=RayBackend(num_workers=2)).fit()
    finally:
        ray.shutdown()
    assert all(torch.equal(remote[n], local[n]) for n in local)
