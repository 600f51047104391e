"""Clients of different LoRA ranks: SVD redistribution and truncation against torch.linalg.svd, equal ranks reducing
to FedAvg (of the products, of the factors), the per-component weights of padding by hand, a client training only its
own rank, a whole run with resume, and the refusals."""

from __future__ import annotations

from collections import OrderedDict

import lightning as L
import pytest
import torch
from conftest import with_federation
from peft import LoraConfig

from fedlit.algorithms import fed_homo_llm
from fedlit.backends.messages import FitRes
from fedlit.client.mods.rank_limit import RankLimit
from fedlit.compression import CompressionConfig
from fedlit.data import DataConfig
from fedlit.lightning_modules import OptimizerConfig
from fedlit.models import ModelConfig
from fedlit.payload import Update, changes_from_bytes, to_bytes
from fedlit.secure import SecureAggregationConfig
from fedlit.strategies import FedAvg, HeteroRank, weighted_average
from fedlit.strategies.lora_factors import padded_to, share_of_rank

A_NAME, B_NAME = "m.q_proj.lora_A.default.weight", "m.q_proj.lora_B.default.weight"


def best_rank(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(matrix.double())
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def client_factors(rank: int, largest: int, seed: int) -> OrderedDict:
    """A rank-``rank`` client's factors, zero-padded to ``largest`` (as its update arrives)."""
    generator = torch.Generator().manual_seed(seed)
    a, b = torch.randn(rank, 10, generator=generator), torch.randn(12, rank, generator=generator)
    return padded_to(OrderedDict([(A_NAME, a), (B_NAME, b), ("m.bias", torch.randn(3, generator=generator))]), largest)


def aggregate(strategy: HeteroRank, payloads: list[OrderedDict], weights: list[int]) -> OrderedDict:
    clients = [f"c{i}" for i in range(len(payloads))]
    initial = OrderedDict((n, torch.zeros_like(t)) for n, t in payloads[0].items())
    strategy.initial(initial)
    strategy.configure_round(1, clients, 0)
    return strategy.aggregate(initial, [Update(c, p, w) for c, p, w in zip(clients, payloads, weights, strict=True)])


def test_svd_redistribution_is_the_best_approximation_of_the_mean_product():
    ranks, weights = [2, 4, 8], [10, 20, 30]
    payloads = [client_factors(r, 8, seed) for seed, r in enumerate(ranks)]
    mean = sum(w * (p[B_NAME].double() @ p[A_NAME].double()) for p, w in zip(payloads, weights, strict=True)) / 60
    strategy = HeteroRank({"c0": 2, "c1": 4, "c2": 8})
    merged = aggregate(strategy, payloads, weights)
    product = merged[B_NAME].double() @ merged[A_NAME].double()
    assert torch.allclose(product, best_rank(mean, 8), atol=1e-5)
    for rank in (1, 3, 5):  # what a rank-r client receives: the best rank-r approximation of the global product
        share = share_of_rank(merged, rank)
        assert share[A_NAME].shape == (rank, 10) and share[B_NAME].shape == (12, rank)
        assert torch.allclose(share[B_NAME].double() @ share[A_NAME].double(), best_rank(product, rank), atol=1e-5)
    assert torch.allclose(merged["m.bias"], weighted_average([p for p in payloads], weights)["m.bias"])


def test_with_equal_ranks_svd_is_fedavg_of_the_products_and_padding_fedavg_of_the_factors():
    payloads, weights = [client_factors(4, 4, seed) for seed in range(2)], [3, 5]
    fedavg = weighted_average(payloads, weights)
    padded = aggregate(HeteroRank(default_rank=4, aggregation="padding"), payloads, weights)
    assert all(torch.allclose(padded[n], fedavg[n], atol=1e-6) for n in fedavg)
    wide_payloads = [client_factors(4, 8, seed) for seed in range(2)]  # (rank 4 each, in an adapter of rank 8)
    mean = sum(w * (p[B_NAME].double() @ p[A_NAME].double()) for p, w in zip(wide_payloads, weights, strict=True)) / 8
    wide = aggregate(HeteroRank(default_rank=4), wide_payloads, weights)
    assert torch.allclose(wide[B_NAME].double() @ wide[A_NAME].double(), mean, atol=1e-5)  # rank 8 holds it all


def test_padding_averages_each_component_over_the_clients_that_have_it():
    low, high = client_factors(1, 3, 0), client_factors(3, 3, 1)
    merged = aggregate(HeteroRank({"c0": 1, "c1": 3}, aggregation="padding"), [low, high], [1, 3])
    by_hand_a = torch.stack([(1 * low[A_NAME][0] + 3 * high[A_NAME][0]) / 4, high[A_NAME][1], high[A_NAME][2]])
    assert torch.allclose(merged[A_NAME], by_hand_a, atol=1e-6)
    assert torch.allclose(merged[B_NAME][:, 0], (low[B_NAME][:, 0] + 3 * high[B_NAME][:, 0]) / 4, atol=1e-6)
    assert torch.allclose(merged[B_NAME][:, 1:], high[B_NAME][:, 1:], atol=1e-6)


def run(model_dir, plays_jsonl, output_dir, strategy, **overrides):
    kwargs = {"model": ModelConfig(str(model_dir)),
              "data": DataConfig(source=str(plays_jsonl), num_clients=3, val_examples_per_client=4,
                                 global_val_examples=6, batch_size=4, max_length=32),
              "peft": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
              "optimizer": OptimizerConfig(lr=2e-2), "strategy": strategy, "rounds": 2, "output_dir": output_dir,
              "loggers": [], "progress": False, "trainer_kwargs": {"max_steps": 3, "accelerator": "cpu"},
              **overrides}
    return fed_homo_llm(**with_federation(kwargs))


def test_a_client_trains_only_the_components_of_its_rank_and_sends_only_those(tiny_model_dir, plays_jsonl, tmp_path):
    loop = run(tiny_model_dir, plays_jsonl, tmp_path / "run", FedAvg())
    module = loop.module_factory()
    with torch.no_grad():
        for name, parameter in module.trainable_parameters().items():
            parameter.copy_(torch.full_like(parameter, 0.1 if "lora_B" in name else 0.2))
    share = share_of_rank(module.trainable_state_dict(), 2)  # (what the server sends a rank-2 client)
    limit = RankLimit("alpha", 2, share)
    L.Trainer(max_steps=3, callbacks=[limit], logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, accelerator="cpu").fit(
        module, datamodule=loop.clients["alpha"].datamodule)
    params = module.trainable_parameters()
    for name, parameter in params.items():
        if "lora_A" in name:
            assert parameter[2:].abs().max() == 0 and (parameter[:2] - 0.2).abs().max() > 1e-4, name
        else:
            assert parameter[:, 2:].abs().max() == 0 and (parameter[:, :2] - 0.1).abs().max() > 1e-4, name
    reply = FitRes(b"", 0, {})
    limit.shape_reply(reply)
    sent = changes_from_bytes(reply.wire, share)
    assert {n: t.shape for n, t in sent.items()} == {n: t.shape for n, t in share.items()}
    assert all(torch.equal(sent[n], share_of_rank(module.trainable_state_dict(), 2)[n]) for n in sent)


@pytest.mark.parametrize("aggregation", ["svd", "padding"])
def test_a_run_of_ranks_1_2_4_trains_and_resumes_bit_identical(aggregation, tiny_model_dir, plays_jsonl, tmp_path):
    def strategy():
        return HeteroRank({"alpha": "small", "beta": 2}, tiers={"small": 1}, default_rank=4, aggregation=aggregation)

    loop = run(tiny_model_dir, plays_jsonl, tmp_path / "whole", strategy())
    whole = loop.fit()
    losses = [r["loss"] for r in loop.history if r["client"] == "global"]
    assert losses[-1] < losses[0]
    run(tiny_model_dir, plays_jsonl, tmp_path / "split", strategy(), rounds=1).fit()
    resumed = run(tiny_model_dir, plays_jsonl, tmp_path / "split", strategy()).fit(resume=True)
    assert all(torch.equal(whole[n], resumed[n]) for n in whole)
    # each client's share travels at its own rank, both ways: the factors of rank 1, 2 and 4, never zero padding
    ranks = {"alpha": 1, "beta": 2, "gamma": 4}
    for row in (r for r in loop.history if r["split"] == "train"):
        share = len(to_bytes(share_of_rank(whole, ranks[row["client"]])))
        assert row["bytes_received"] == share and 0 < row["bytes_sent"] <= share, row
    assert len(to_bytes(share_of_rank(whole, 1))) < len(to_bytes(share_of_rank(whole, 2))) < len(to_bytes(whole))


@pytest.mark.parametrize(("strategy", "setting", "message"), [
    (HeteroRank(default_rank=4), {"secure_aggregation": SecureAggregationConfig()},
     "strategy HeteroRank cannot run with secure_aggregation"),
    (HeteroRank(default_rank=4), {"compression": CompressionConfig()},
     "strategy HeteroRank cannot run with compression: a client's share travels at its own rank"),
    (HeteroRank(default_rank=8), {}, r"ranks \{'\(default\)': 8\} are outside 1..4"),
    (HeteroRank({"hamlet": 2}, default_rank=4), {}, r"ranks name client\(s\) \['hamlet'\]"),
    (HeteroRank({"alpha": 2}), {}, "client 'beta' has no rank"),
])
def test_what_cannot_work_is_refused_by_name(strategy, setting, message, tiny_model_dir, plays_jsonl, tmp_path):
    with pytest.raises(ValueError, match=message):
        run(tiny_model_dir, plays_jsonl, tmp_path / "run", strategy, **setting).fit()


def test_a_tier_that_is_not_defined_is_named():
    with pytest.raises(ValueError, match=r"tier\(s\) \['huge'\] that tiers does not define"):
        HeteroRank({"alpha": "huge"}, tiers={"small": 4})
