"""Client-level DP (DP-FedAvg): accounting against dp-accounting itself, the clipping bound, the noise scale,
the epsilon budget."""

import csv
import logging

import dp_accounting
import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from peft import LoraConfig

from fedlit.client import Client
from fedlit.faults import FaultPolicy
from fedlit.lightning_modules import OptimizerConfig
from fedlit.payload import flatten, from_bytes
from fedlit.privacy import ClientDPConfig
from fedlit.secure import SecureAggregationConfig
from fedlit.strategies import FedAvg, FedMedian


def epsilons(loop):
    return [r["epsilon"] for r in loop.history if r["split"] == "privacy"]


@pytest.mark.parametrize("sampling", ["poisson", "fixed"])
def test_epsilon_after_each_round_matches_the_accountant_called_directly(make_loop, sampling):
    dp = ClientDPConfig(noise_multiplier=1.1, clip_norm=0.5, delta=1e-3)
    loop = make_loop(rounds=3, privacy=dp, strategy=FedAvg(clients_per_round=2, sampling=sampling),
                     trainer_kwargs={"max_steps": 1, "accelerator": "cpu"})
    loop.fit()
    expected = []
    for rounds in (1, 2, 3):
        if sampling == "poisson":  # opacus's RDP accountant, stepped once per round
            reference = RDPAccountant()
            for _ in range(rounds):
                reference.step(noise_multiplier=1.1, sample_rate=2 / 3)
            expected.append(reference.get_epsilon(1e-3))
        else:  # replace-one neighbours: the clipped sum moves by up to 2 * clip_norm
            accountant = dp_accounting.rdp.RdpAccountant(
                neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
            event = dp_accounting.SampledWithoutReplacementDpEvent(3, 2, dp_accounting.GaussianDpEvent(0.55))
            accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
            expected.append(accountant.get_epsilon(1e-3))
    assert epsilons(loop) == pytest.approx(expected, rel=1e-12)
    assert expected[0] < expected[1] < expected[2]
    with open(loop.output_dir / "metrics.csv") as f:
        assert [float(r["epsilon"]) for r in csv.DictReader(f) if r["split"] == "privacy"] == pytest.approx(expected)


def test_every_client_update_is_clipped(make_loop, monkeypatch):
    clip = 0.05
    seen = []
    original = Client.fit

    def spy(self, ins, *args, **kwargs):
        result = original(self, ins, *args, **kwargs)
        seen.append(float(np.linalg.norm(flatten(from_bytes(result.wire)) - flatten(from_bytes(ins.global_wire)))))
        return result

    monkeypatch.setattr(Client, "fit", spy)
    loop = make_loop(rounds=2, privacy=ClientDPConfig(noise_multiplier=0.0, clip_norm=clip),
                     optimizer=OptimizerConfig(lr=5e-2))
    loop.fit()
    assert len(seen) == 4 and all(norm <= clip * (1 + 1e-6) for norm in seen)
    assert max(seen) > 0.9 * clip  # the bound is active: the unclipped updates are longer


@pytest.mark.parametrize("secure", [False, True], ids=["server-noise", "client-noise-shares"])
def test_noise_on_the_sum_has_std_sigma_times_clip(make_loop, secure):
    """With lr 0 every update is zero, so the new global adapter minus the old one, times the fixed denominator,
    is exactly the noise on the sum: added once by the server, or as three clients' shares under masking."""
    sigma, clip = 0.8, 0.25
    loop = make_loop(rounds=1, privacy=ClientDPConfig(noise_multiplier=sigma, clip_norm=clip),
                     strategy=FedAvg(clients_per_round=3), optimizer=OptimizerConfig(lr=0.0),
                     faults=FaultPolicy(min_clients=3), peft=LoraConfig(r=16, target_modules=["q_proj", "v_proj"]),
                     secure_aggregation=SecureAggregationConfig() if secure else None)
    initial = loop.module_factory().trainable_state_dict()
    final = loop.fit()
    noise = (flatten(final) - flatten(initial)) * 3
    assert len(noise) == 3584
    assert np.std(noise) == pytest.approx(sigma * clip, rel=0.06)
    assert abs(np.mean(noise)) < 4 * sigma * clip / np.sqrt(len(noise))


def test_target_epsilon_stops_the_run_before_the_round_that_would_pass_it(make_loop, caplog):
    dp = ClientDPConfig(noise_multiplier=1.0, clip_norm=0.5, delta=1e-3)
    probe = make_loop(rounds=3, privacy=dp, output_dir=make_loop().output_dir.parent / "probe")
    budget = (probe.accountant.epsilon(2) + probe.accountant.epsilon(3)) / 2  # rounds 1-2 fit, round 3 does not
    loop = make_loop(rounds=3, privacy=ClientDPConfig(noise_multiplier=1.0, clip_norm=0.5, delta=1e-3,
                                                      target_epsilon=budget))
    with caplog.at_level(logging.WARNING, logger="fedlit.server.loop"):
        final = loop.fit()
    assert "stopping before round 3" in loop.stopped and "target" in loop.stopped
    assert loop.stopped in caplog.text
    assert sorted(p.name for p in loop.checkpoints.directory.iterdir())[-1] == "round-0002.ckpt"
    assert max(epsilons(loop)) <= budget
    assert (loop.output_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert all(torch.equal(final[n], loop.global_payload[n]) for n in final)


def test_strategies_that_need_individual_updates_refuse_dp(make_loop):
    with pytest.raises(ValueError, match="FedMedian needs each client's update, which client-level DP hides"):
        make_loop(strategy=FedMedian(), privacy=ClientDPConfig())


def test_dp_sgd_step_equals_hand_clipped_per_example_gradients_plus_noise(tiny_model_dir):
    """One DP-SGD step through the callback vs per-example gradients computed one example at a time, each
    clipped to max_grad_norm, summed, noised with the same generator and divided by the batch size."""
    import lightning as L
    from peft import LoraConfig as Lora
    from torch.utils.data import DataLoader

    from fedlit.client.mods import ExampleLevelDP
    from fedlit.data import CausalLMCollator
    from fedlit.lightning_modules import PeftModule, build_peft_model
    from fedlit.models import ModelConfig, load_base_model
    from fedlit.privacy import ExampleDPConfig, PartySecret

    torch.manual_seed(0)
    examples = [{"input_ids": torch.randint(0, 200, (n,)).tolist()} for n in (7, 5, 9, 6)]
    batch = CausalLMCollator(0)(examples)
    model = build_peft_model(load_base_model(ModelConfig(str(tiny_model_dir))),
                             Lora(r=2, target_modules=["q_proj", "v_proj"]), seed=1)
    module = PeftModule(model, OptimizerConfig(lr=0.1))
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    config = ExampleDPConfig(noise_multiplier=0.7, max_grad_norm=0.01)

    def loss_of(i):  # the module's token-mean loss over the batch: example i's share of it
        logits = module(batch)
        from fedlit.lightning_modules import shifted_token_loss
        labels = batch["labels"].clone()
        labels[[j for j in range(4) if j != i]] = -100
        total_tokens = (batch["labels"][:, 1:] != -100).sum()
        loss, count = shifted_token_loss(logits, labels)
        return loss * count / total_tokens

    clipped_sum = {n: torch.zeros_like(t) for n, t in start.items()}
    for i in range(4):
        model.zero_grad()
        (loss_of(i) * 4).backward()  # opacus's "mean" reduction: per-example gradient = batch size x its share
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads.values()))
        for n, g in grads.items():
            clipped_sum[n] += g * min(1.0, float(config.max_grad_norm / (norm + 1e-6)))
    model.zero_grad()
    secret = PartySecret(bytes(range(32)))
    generator = secret.torch("dp-sgd-noise", 1)
    expected = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            noise = torch.normal(0, 0.7 * 0.01, p.shape, generator=generator)
            expected[n] = start[n] - 0.1 * (clipped_sum[n] + noise) / 4
    callback = ExampleLevelDP(config, batch_size=4, secret=secret, server_round=1)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback], accelerator="cpu")
    module.configure_optimizers = lambda: torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    trainer.fit(module, DataLoader([batch], batch_size=None))
    assert callback.steps == 1
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.detach(), expected[n], atol=1e-6), n
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())  # hooks and samples removed


def test_dp_sgd_run_reports_each_clients_epsilon(make_loop):
    from fedlit.privacy import ExampleDPConfig, subsampled_gaussian_epsilon

    loop = make_loop(rounds=2, strategy=FedAvg(), example_privacy=ExampleDPConfig(noise_multiplier=1.0,
                                                                                  max_grad_norm=1.0, delta=1e-3),
                     trainer_kwargs={"max_steps": 2, "accelerator": "cpu"})
    loop.fit()
    for client_id, client in loop.clients.items():
        rows = [r for r in loop.history if r["client"] == client_id and r["split"] == "train"]
        n, batch = len(client.datamodule.train_dataset), client.datamodule.batch_size
        assert [r["epsilon"] for r in rows] == pytest.approx(
            [subsampled_gaussian_epsilon(n, batch, 1.0, steps, 1e-3, poisson=False) for steps in (2, 4)])
