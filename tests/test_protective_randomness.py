"""Randomness that protects is secret to the party that adds it: DP noise (central, shares, DP-SGD) and private
inference perturbation come from each party's own OS-entropy secret, never from the config's seed. Two fresh runs
of one config draw different noise; a resumed round draws what the uninterrupted run drew; an attacker who knows
the config cannot regenerate the released noise; ``insecure_seed`` pins it for experiments, loudly."""

from __future__ import annotations

import copy
import logging
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import drop_last_round
from peft import LoraConfig

from fedlit.faults import FaultPolicy
from fedlit.lightning_modules import OptimizerConfig
from fedlit.payload import flatten
from fedlit.privacy import ClientDPConfig, ExampleDPConfig, PartySecret
from fedlit.secret_audit import clients_secrets, watch
from fedlit.secure import SecureAggregationConfig
from fedlit.seeds import client_seed
from fedlit.strategies import FedAvg


def test_a_party_secret_is_os_entropy_kept_by_its_owner_and_every_copy_is_seen(tmp_path: Path, caplog) -> None:
    assert PartySecret.fresh("client 'a'").entropy != PartySecret.fresh("client 'a'").entropy
    path = tmp_path / "state" / "secret"
    kept = PartySecret.load_or_create(path, "client 'a'")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # readable by its owner only
    assert PartySecret.load_or_create(path, "client 'a'") == kept  # read back, as a resume does
    assert kept.numpy("dp-noise", 1).normal(size=4).tolist() == kept.numpy("dp-noise", 1).normal(size=4).tolist()
    assert kept.numpy("dp-noise", 1).normal() != kept.numpy("dp-noise", 2).normal()  # each purpose its own stream
    with caplog.at_level(logging.WARNING, logger="fedlit.privacy.party_secret"):
        pinned = PartySecret.fresh("client 'a'", insecure_seed=3)
    assert pinned == PartySecret.fresh("client 'a'", insecure_seed=3) != PartySecret.fresh("client 'b'", 3)
    assert "insecure_seed 3" in caplog.text and "client 'a'" in caplog.text
    with watch() as seen:  # a copy by any route is counted where it is made
        pickle.loads(pickle.dumps(kept))
        copy.deepcopy(kept)
        PartySecret.fresh("the server")
    assert clients_secrets(seen) == 2 and seen["the server"] == 1


def noise_run(make_loop, mode: str, output_dir: Path, **overrides):
    """A 2-round run whose global adapter carries each mode's noise: lr 0 (so updates are zero and only noise
    moves the adapter) for client-level DP, centrally or in masked shares; DP-SGD's noise for example-level DP."""
    settings = {
        "central": {"privacy": ClientDPConfig(noise_multiplier=1.0, clip_norm=1.0), "optimizer": OptimizerConfig(lr=0)},
        "shares": {"privacy": ClientDPConfig(noise_multiplier=1.0, clip_norm=1.0), "optimizer": OptimizerConfig(lr=0),
                   "secure_aggregation": SecureAggregationConfig(), "faults": FaultPolicy(min_clients=3)},
        "dp_sgd": {"example_privacy": ExampleDPConfig(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-3)},
    }[mode]
    return make_loop(rounds=2, strategy=FedAvg(clients_per_round=3), output_dir=output_dir,
                     **{**settings, **overrides})


@pytest.mark.parametrize("mode", ["central", "shares", "dp_sgd"])
def test_fresh_runs_draw_different_noise_and_a_resumed_round_draws_the_same(make_loop, tmp_path: Path,
                                                                            mode: str) -> None:
    first = noise_run(make_loop, mode, tmp_path / "first").fit()
    second = noise_run(make_loop, mode, tmp_path / "second").fit()
    assert not np.allclose(flatten(first), flatten(second))  # same config, same seed: other noise
    assert drop_last_round(tmp_path / "first") == 2
    resumed = noise_run(make_loop, mode, tmp_path / "first").fit(resume=True)
    assert all(torch.equal(resumed[n], first[n]) for n in first)  # the secret was read back


@pytest.mark.parametrize("mode", ["central", "shares", "dp_sgd"])
def test_insecure_seed_pins_the_noise_for_experiments(make_loop, tmp_path: Path, mode: str, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="fedlit.privacy.party_secret"):
        first = noise_run(make_loop, mode, tmp_path / "first", insecure_seed=5).fit()
    second = noise_run(make_loop, mode, tmp_path / "second", insecure_seed=5).fit()
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert "insecure_seed 5" in caplog.text


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_an_attacker_who_knows_the_config_cannot_regenerate_the_central_noise(make_loop, tmp_path: Path) -> None:
    """Round 1's released change is the server's noise over the denominator (lr 0: zero updates). The attacker
    regenerates candidate noise from everything in the config: the seed as fedlit used to derive it, and the
    insecure derivation with the config's seed. Neither matches a default run's noise; with insecure_seed both
    the run's noise and the attacker's regeneration are the same vector (the test can tell)."""
    def released(**overrides) -> np.ndarray:
        loop = make_loop(rounds=1, strategy=FedAvg(clients_per_round=3), optimizer=OptimizerConfig(lr=0),
                         privacy=ClientDPConfig(noise_multiplier=1.0, clip_norm=1.0), **overrides)
        start = flatten(loop.module_factory().trainable_state_dict())
        return (flatten(loop.fit()) - start) * 3

    def guesses(seed: int, length: int) -> list[np.ndarray]:
        return [np.random.default_rng(client_seed(seed, 1, "dp-noise")).normal(0.0, 1.0, length),
                PartySecret.fresh("the server", insecure_seed=seed).numpy("dp-noise", 1).normal(0.0, 1.0, length)]

    noise = released(output_dir=tmp_path / "secret")
    assert all(abs(correlation(noise, guess)) < 0.1 for guess in guesses(0, len(noise)))
    pinned = released(output_dir=tmp_path / "pinned", insecure_seed=0)
    assert correlation(pinned, guesses(0, len(pinned))[1]) > 0.999


def test_private_inference_perturbation_is_drawn_from_the_clients_own_secret(tiny_model_dir: Path,
                                                                            tmp_path: Path) -> None:
    from fedlit.inference import InferenceConfig, ModelSpec
    from fedlit.inference.inference_client import InferenceClientApp

    prompt = "the king is dead and the queen is in the garden with the prince of denmark " * 3
    local = ModelSpec(model=str(tiny_model_dir))

    def sent(**settings) -> str:
        config = InferenceConfig(epsilon=1.0, candidates=8, table_dir=str(tmp_path / "tables"), **settings)
        return InferenceClientApp("client", [prompt], config, tmp_path / "answers.jsonl", local).query().prompts[0]

    assert sent() != sent()  # the same config twice: other draws, nothing for the server to replay
    assert sent(insecure_seed=1) == sent(insecure_seed=1)


def test_on_ray_no_clients_secret_comes_into_being_in_the_driver(make_loop, tmp_path: Path) -> None:
    """Secure aggregation with client noise shares and DP-SGD on Ray workers: the driver, which holds the server,
    is watched for the whole run (every copy of a client's secure-aggregation state or party secret is counted as
    it is made, however briefly it lives). The same watch sees a copy the test makes on purpose."""
    pytest.importorskip("ray")
    import ray

    from fedlit.backends import RayBackend
    from fedlit.secure.protocol import SecAggClient
    from fedlit.secure.simulation import SecureRound

    loop = make_loop(rounds=1, strategy=FedAvg(clients_per_round=3), backend=RayBackend(num_workers=2),
                     privacy=ClientDPConfig(noise_multiplier=1.0, clip_norm=1.0),
                     secure_aggregation=SecureAggregationConfig(), faults=FaultPolicy(min_clients=3),
                     example_privacy=ExampleDPConfig(noise_multiplier=0.5, max_grad_norm=1.0, delta=1e-3),
                     peft=LoraConfig(r=2, target_modules=["q_proj"]))
    try:
        with watch() as seen:
            loop.fit()
    finally:
        ray.shutdown()
    assert clients_secrets(seen) == 0, seen
    assert len(list((loop.output_dir / "client_state").rglob("secret"))) == 3  # each client holds its own
    with watch() as control:
        secure_round = SecureRound(SecureAggregationConfig(), 1, ["a", "b", "c"], 4)
        secure_round.exchange_keys()
        copied = pickle.loads(pickle.dumps(secure_round.clients["a"].secagg))  # a transient copy, made on purpose
    assert clients_secrets(control) == 4 and isinstance(copied, SecAggClient)
