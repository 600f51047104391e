"""End-to-end FederatedLoop behaviour on the tiny model: learning, outputs, payloads, resume, errors."""

import csv
import gc
import weakref

import lightning as L
import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM

from fedlit.backends import FitIns
from fedlit.client import ClientApp
from fedlit.data import GLOBAL
from fedlit.payload import to_bytes
from fedlit.server.round_workflow import PlainWorkflow
from fedlit.server.run_dir import OutputDirError
from fedlit.strategies import FedAdam, FedAvg, weighted_average


def read_metrics(output_dir):
    with open(output_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def global_losses(rows):
    return {int(r["round"]): float(r["loss"]) for r in rows if r["client"] == GLOBAL}


def test_fit_learns_and_writes_metrics_adapter_and_checkpoints(make_loop, tmp_path):
    loop = make_loop(rounds=3)
    loop.fit()
    out = tmp_path / "run"
    rows = read_metrics(out)
    assert {"round", "client", "split", "loss", "perplexity", "bytes_sent", "bytes_received"} <= set(rows[0])
    losses = global_losses(rows)
    assert sorted(losses) == [0, 1, 2, 3]
    assert losses[3] < losses[0]
    val_rows = [r for r in rows if r["split"] == "val"]
    assert {r["client"] for r in val_rows} == {"alpha", "beta", "gamma", GLOBAL}
    for r in val_rows:  # torchmetrics perplexity is exp of the token-weighted loss
        assert float(r["perplexity"]) == pytest.approx(torch.tensor(float(r["loss"])).exp().item(), rel=1e-4)
    train_rows = [r for r in rows if r["split"] == "train"]
    assert len(train_rows) == 3 * 2  # 2 sampled clients per round
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"round-000{i}.ckpt" for i in range(4)]
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_eval_every_skips_rounds_but_not_the_first_or_last(make_loop, tmp_path):
    make_loop(rounds=5, eval_every=2).fit()
    rows = read_metrics(tmp_path / "run")
    assert sorted(global_losses(rows)) == [0, 2, 4, 5]
    assert sorted({int(r["round"]) for r in rows if r["split"] == "train"}) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="eval_every must be >= 1"):
        make_loop(eval_every=0)


def test_only_adapter_tensors_travel_and_bytes_are_logged(make_loop, tmp_path):
    loop = make_loop(rounds=1)
    initial = loop.module_factory().trainable_state_dict()
    final = loop.fit()
    assert list(final) == list(initial)
    assert all(".lora_A." in name or ".lora_B." in name for name in final)
    # 2 layers x (q, v) x (A, B)
    assert len(final) == 8
    assert any(not torch.equal(final[n], initial[n]) for n in final)
    wire_size = len(to_bytes(final))
    for row in read_metrics(tmp_path / "run"):
        if row["split"] == "train":
            assert int(row["bytes_sent"]) == wire_size == int(row["bytes_received"])


def test_saved_adapter_reproduces_reported_eval_loss_with_plain_peft(make_loop, tiny_model_dir, tmp_path):
    loop = make_loop(rounds=2)
    loop.fit()
    reported = global_losses(read_metrics(tmp_path / "run"))[2]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter").eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in loop.evaluation.global_val.val_dataloader():
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += model(**batch).loss.item() * n
            count += n
    assert total / count == pytest.approx(reported, abs=1e-5)


def test_fedavg_of_client_updates_is_the_new_global(make_loop):
    recorded = []

    class RecordingFedAvg(FedAvg):
        def aggregate(self, global_payload, updates):
            recorded.append(list(updates))
            return super().aggregate(global_payload, updates)

    final = make_loop(rounds=1, strategy=RecordingFedAvg(clients_per_round=3)).fit()
    (updates,) = recorded
    assert sorted(u.client_id for u in updates) == ["alpha", "beta", "gamma"]
    assert [u.num_examples for u in updates] == [34, 34, 34]
    for name, tensor in final.items():
        hand = sum(u.payload[name].double() for u in updates) / 3
        assert torch.allclose(tensor.double(), hand, atol=1e-6, rtol=0)
    assert weighted_average([u.payload for u in updates], [1, 1, 1]).keys() == final.keys()


def test_clients_share_one_frozen_base(make_loop):
    loop = make_loop(rounds=1)
    first, second = loop.module_factory(), loop.module_factory()
    assert first.model is second.model
    base_params = [p for p in first.model.parameters() if not p.requires_grad]
    assert base_params and all(not p.requires_grad for p in base_params)


@pytest.mark.parametrize("strategy", [FedAvg, FedAdam])
def test_resume_after_round_two_is_bit_identical(make_loop, tmp_path, strategy):
    def build(rounds, name):  # a fresh strategy each time: its state must come from the checkpoint
        return make_loop(rounds=rounds, output_dir=tmp_path / name, strategy=strategy(clients_per_round=2))

    reference = build(4, "reference").fit()
    build(2, "interrupted").fit()
    resumed = build(4, "interrupted").fit(resume=True)
    assert list(resumed) == list(reference)
    for name in reference:
        assert torch.equal(resumed[name], reference[name]), name
    without_time = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert without_time(read_metrics(tmp_path / "interrupted")) == without_time(read_metrics(tmp_path / "reference"))


def test_crash_mid_round_resumes_identically(make_loop, tmp_path, monkeypatch):
    """The server dies in round 2 after its clients trained (a client's own failure only excludes that client)."""
    reference = make_loop(rounds=3, output_dir=tmp_path / "reference").fit()
    original = PlainWorkflow.aggregate

    def crash_in_round_two(self, strategy, global_payload, updates):
        if len(crash_in_round_two.calls) == 1:
            raise RuntimeError("simulated crash")
        crash_in_round_two.calls.append(1)
        return original(self, strategy, global_payload, updates)

    crash_in_round_two.calls = []
    monkeypatch.setattr(PlainWorkflow, "aggregate", crash_in_round_two)
    with pytest.raises(RuntimeError, match="simulated crash"):
        make_loop(rounds=3, output_dir=tmp_path / "crashed").fit()
    monkeypatch.setattr(PlainWorkflow, "aggregate", original)
    assert sorted(p.name for p in (tmp_path / "crashed" / "checkpoints").iterdir()) == [
        "round-0000.ckpt", "round-0001.ckpt"]
    resumed = make_loop(rounds=3, output_dir=tmp_path / "crashed").fit(resume=True)
    for name in reference:
        assert torch.equal(resumed[name], reference[name]), name


def test_existing_checkpoints_need_resume(make_loop):
    make_loop(rounds=1).fit()
    with pytest.raises(OutputDirError, match=r"already holds a run \(checkpoints/, metrics.csv, adapter/"):
        make_loop(rounds=1).fit()


def test_adapter_mismatch_between_checkpoint_and_client_is_named(make_loop):
    make_loop(rounds=1).fit()
    wider = LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    with pytest.raises(ValueError, match=r"adapter mismatch for checkpoint .*round-0001.ckpt: shape mismatch"):
        make_loop(rounds=2, peft=wider).fit(resume=True)


def test_reserved_and_duplicate_client_ids_rejected(make_loop):
    loop = make_loop(rounds=1)
    clients = list(loop.clients.values())
    from fedlit import Client, FederatedLoop

    with pytest.raises(ValueError, match="duplicate client ids: \\['alpha'\\]"):
        FederatedLoop(clients + clients[:1], loop.module_factory, loop.federation)
    with pytest.raises(ValueError, match="'global' is reserved"):
        FederatedLoop([Client("global", clients[0].datamodule)], loop.module_factory, loop.federation)


def test_client_rejects_a_global_adapter_that_does_not_match(make_loop):
    loop = make_loop(rounds=1)
    payload = loop.module_factory().trainable_state_dict()
    name = next(iter(payload))
    payload[name] = torch.zeros(3, 3)
    client = loop.clients["beta"]
    with pytest.raises(ValueError, match=rf"adapter mismatch for client 'beta': shape mismatch {name}"):
        client.fit(FitIns(to_bytes(payload), 0), ClientApp(client, loop.module_factory,
                                                           {"max_steps": 1, "accelerator": "cpu"}))


def test_client_trains_adapter_in_train_mode(make_loop):
    """The shared base comes back from evaluation in eval mode; local training must still use dropout."""
    loop = make_loop(rounds=1)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(all(m.training for n, m in pl_module.model.named_modules() if "lora_dropout" in n))

    loop.module_factory().eval()
    client = loop.clients["alpha"]
    payload = loop.module_factory().trainable_state_dict()
    ClientApp(client, loop.module_factory, {"max_steps": 2, "accelerator": "cpu", "callbacks": [Spy()]}).fit(
        FitIns(to_bytes(payload), seed=0))
    assert seen == [True, True]


def test_a_client_keeps_no_module_or_optimizer_state_between_its_fits(make_loop):
    """A client's data lives as long as the client; Lightning gives it a reference to the Trainer, which holds the
    fit's module, optimizer state and gradients: with hundreds of clients per worker that was an adapter's worth
    of tensors, four times over, per client."""
    loop = make_loop(rounds=1)
    built = []

    def factory():
        module = loop.module_factory()
        built.append(weakref.ref(module))
        return module

    client = loop.clients["alpha"]
    ClientApp(client, factory, {"max_steps": 2, "accelerator": "cpu"}).fit(
        FitIns(to_bytes(loop.module_factory().trainable_state_dict()), seed=0))
    gc.collect()
    assert len(built) == 1 and built[0]() is None
    assert client.datamodule.trainer is None


def test_eval_clients_evaluates_a_seeded_sample_plus_the_global_split(make_loop, tmp_path):
    def evaluated(loop):
        rows = [r for r in loop.history if r["split"] == "val"]
        return {r["round"]: sorted(row["client"] for row in rows if row["round"] == r["round"]) for r in rows}

    first = make_loop(rounds=3, eval_clients=2, output_dir=tmp_path / "a")
    first.fit()
    seen = evaluated(first)
    assert sorted(seen) == [0, 1, 2, 3]
    assert all(len(clients) == 3 and GLOBAL in clients for clients in seen.values())  # 2 clients + global
    assert len({tuple(c) for c in seen.values()}) > 1  # a fresh sample per evaluation
    again = make_loop(rounds=3, eval_clients=2, output_dir=tmp_path / "b")
    again.fit()
    assert evaluated(again) == seen
