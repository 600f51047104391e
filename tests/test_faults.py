"""Faulty clients: each kind of failure in one of five clients excludes that client, says why, and never
reaches the aggregate; too few good updates skip the round; a server crash resumes identically."""

import csv
import logging
import os
import signal
import subprocess
import sys
import time
from collections import OrderedDict

import numpy as np
import pytest
import torch

from fedlit.client import Client
from fedlit.data import DataConfig
from fedlit.faults import FaultPolicy
from fedlit.payload import Update, from_bytes, to_bytes
from fedlit.secure import SecureAggregationConfig
from fedlit.server.interrupts import NothingTrained
from fedlit.strategies import FedAvg, FedAvgNormBound, FedMedian, FedTrimmedMean


def corrupt(payload, fault):
    """The payload as a buggy client would send it."""
    bad = OrderedDict((n, t.clone()) for n, t in payload.items())
    name = next(iter(bad))
    if fault == "nan":
        bad[name][0, 0] = float("nan")
    elif fault == "inf":
        bad[name][-1, -1] = float("inf")
    elif fault == "shape":
        bad[name] = bad[name][:, :-1]
    elif fault == "dtype":
        bad[name] = bad[name].to(torch.float16)
    elif fault == "norm":
        bad[name] = bad[name] + 100.0
    return bad


class FaultyClient(Client):
    fault: str = ""

    def fit(self, ins, *args, **kwargs):
        if self.fault == "raise":
            raise RuntimeError("disk full")
        if self.fault == "hang":
            time.sleep(30)
        result = super().fit(ins, *args, **kwargs)
        result.wire = to_bytes(corrupt(from_bytes(result.wire), self.fault))
        return result


FAULTS = {"raise": "RuntimeError: disk full",
          "hang": "ClientTimeout: client 'client-002' did not finish its fit within 2 s",
          "nan": "non-finite values", "inf": "non-finite values", "shape": "adapter mismatch for the update",
          "dtype": "dtype mismatch", "norm": "exceeds the bound 50"}


def five_clients(make_loop, tmp_path, name, **overrides):
    data = DataConfig(source=str(make_loop.plays), partition="iid", num_clients=5, val_examples_per_client=2,
                      global_val_examples=4, batch_size=4, max_length=32)
    settings = dict(data=data, rounds=1, strategy=FedAvg(), output_dir=tmp_path / name,
                    faults=FaultPolicy(timeout_s=2, min_clients=3, max_update_norm=50.0, client_errors="exclude"),
                    trainer_kwargs={"max_steps": 2, "accelerator": "cpu"})
    return make_loop(**{**settings, **overrides})


@pytest.fixture
def loops(make_loop, plays_jsonl):
    make_loop.plays = plays_jsonl
    return make_loop


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_faulty_client_is_excluded_with_its_reason_and_never_reaches_the_aggregate(loops, tmp_path, fault,
                                                                                     caplog):
    loop = five_clients(loops, tmp_path, "faulty")
    bad = loop.clients["client-002"]
    loop.clients["client-002"] = FaultyClient(bad.client_id, bad.datamodule)
    FaultyClient.fault = fault
    with caplog.at_level(logging.WARNING, logger="fedlit.server.loop"):
        final = loop.fit()
    (row,) = [r for r in loop.history if r["client"] == "client-002" and r["split"] == "train"]
    assert FAULTS[fault] in row["excluded"] and "loss" not in row
    assert f"client 'client-002' excluded: {row['excluded']}" in caplog.text
    with open(loop.output_dir / "metrics.csv") as f:
        (written,) = [r for r in csv.DictReader(f) if (r["client"], r["split"]) == ("client-002", "train")]
    assert FAULTS[fault] in written["excluded"]
    # the same round with only the four good clients (their fits do not depend on who else takes part)
    good = five_clients(loops, tmp_path, "good")
    del good.clients["client-002"]
    reference = good.fit()
    assert all(torch.equal(final[n], reference[n]) for n in reference)


def test_in_a_simulation_an_exception_in_client_code_stops_the_run_and_resume_continues(loops, tmp_path):
    """By default a client's exception is a bug under LocalBackend: the run stops with one line naming the round,
    the client and the error; round 1's checkpoint stays and a resume (the bug fixed) ends as an uninterrupted
    run."""
    from fedlit.faults import ClientError

    loop = five_clients(loops, tmp_path, "stopped", rounds=2, faults=FaultPolicy(min_clients=3))
    loop.clients["client-002"] = Breaking("client-002", loop.clients["client-002"].datamodule)
    with pytest.raises(ClientError) as stopped:
        loop.fit()
    message = str(stopped.value)
    assert message.startswith("round 2: client 'client-002' raised in its fit: RuntimeError: planted bug")
    assert "\n" not in message and "--resume" in message
    assert [r for r in loop.history if r["round"] == 2] == []  # round 2 never happened
    resumed = five_clients(loops, tmp_path, "stopped", rounds=2, faults=FaultPolicy(min_clients=3)).fit(resume=True)
    reference = five_clients(loops, tmp_path, "reference", rounds=2, faults=FaultPolicy(min_clients=3)).fit()
    assert all(torch.equal(resumed[n], reference[n]) for n in reference)


class Breaking(Client):
    """Client code with a bug that shows in its second fit."""

    def fit(self, ins, *args, **kwargs):
        if ins.server_round == 2:
            raise RuntimeError("planted bug")
        return super().fit(ins, *args, **kwargs)


def test_too_few_good_updates_skip_the_round_and_keep_the_global_adapter(loops, tmp_path, caplog):
    loop = five_clients(loops, tmp_path, "skip", faults=FaultPolicy(min_clients=4, client_errors="exclude"))
    for cid in ("client-001", "client-003"):
        loop.clients[cid] = FaultyClient(cid, loop.clients[cid].datamodule)
    FaultyClient.fault = "raise"
    initial = loop.module_factory().trainable_state_dict()
    with caplog.at_level(logging.WARNING, logger="fedlit.server.loop"), pytest.raises(NothingTrained) as nothing:
        loop.fit()  # its only round was skipped: nothing trained, which is an error, with the reason
    assert "3 of 5 sampled clients sent a usable update (min_clients 4)" in str(nothing.value)
    assert all(torch.equal(loop.global_payload[n], initial[n]) for n in initial)
    assert not (loop.output_dir / "adapter").exists()
    (skipped,) = [r for r in loop.history if r["split"] == "round"]
    assert "round skipped: 3 of 5 sampled clients sent a usable update (min_clients 4)" == skipped["excluded"]
    assert "round 1 skipped" in caplog.text


def test_a_failing_client_under_secure_aggregation_is_a_recovered_dropout(loops, tmp_path):
    masked = five_clients(loops, tmp_path, "masked", secure_aggregation=SecureAggregationConfig())
    masked.clients["client-004"] = FaultyClient("client-004", masked.clients["client-004"].datamodule)
    FaultyClient.fault = "raise"
    final = masked.fit()
    plain = five_clients(loops, tmp_path, "plain")
    del plain.clients["client-004"]
    reference = plain.fit()
    assert all(torch.allclose(final[n], reference[n], atol=1e-6) for n in reference)


def test_trimmed_mean_and_norm_bound_against_hand_computations():
    values = [1.0, 2.0, 3.0, 100.0, -50.0]
    updates = [Update(f"c{i}", OrderedDict(w=torch.tensor([v, -v])), num_examples=i + 1) for i, v in enumerate(values)]
    start = OrderedDict(w=torch.zeros(2))
    assert torch.equal(FedTrimmedMean(trim=0.2).aggregate(start, updates)["w"], torch.tensor([2.0, -2.0]))
    assert torch.equal(FedTrimmedMean(trim=0.0).aggregate(start, updates)["w"], torch.tensor([11.2, -11.2]))
    bounded = FedAvgNormBound(bound=2 ** 0.5).aggregate(start, updates)["w"]  # every update scaled to (+-1, -+1)
    signs = torch.tensor([1.0, 1, 1, 1, -1])
    weights = torch.arange(1.0, 6)
    assert torch.allclose(bounded[0], (signs * torch.tensor([1.0, 1, 1, 1, 1]) * weights).sum() / weights.sum())
    with pytest.raises(ValueError, match="trim must be in"):
        FedTrimmedMean(trim=0.5)


def test_robust_strategies_keep_a_large_outlier_out(loops, tmp_path):
    """Norm bound off: FedAvg follows the outlier, the robust rules do not."""
    robust = (FedMedian(), FedTrimmedMean(trim=0.2), FedAvgNormBound(bound=1.0))
    for strategy, moved in ((FedAvg(), True), *((s, False) for s in robust)):
        loop = five_clients(loops, tmp_path, type(strategy).__name__, strategy=strategy, faults=FaultPolicy())
        loop.clients["client-000"] = FaultyClient("client-000", loop.clients["client-000"].datamodule)
        FaultyClient.fault = "norm"
        initial = loop.module_factory().trainable_state_dict()
        final = loop.fit()
        shift = max(float((final[n] - initial[n]).abs().max()) for n in final)
        assert (shift > 10) is moved


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir, plays_jsonl):
    """The CLI arguments, environment, output dir and wall time of one uninterrupted run (shared by the kill
    points)."""
    args = [sys.executable, "-m", "fedlit.cli", "fit", "--model.name_or_path", str(tiny_model_dir),
            "--data.source", str(plays_jsonl), "--data.num_clients", "3", "--data.val_examples_per_client", "2",
            "--data.global_val_examples", "4", "--data.max_length", "32", "--data.batch_size", "4",
            "--rounds", "4", "--trainer.max_steps", "3", "--trainer.accelerator", "cpu",
            "--progress", "false", "--loggers", "[]"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    whole = tmp_path_factory.mktemp("uninterrupted") / "whole"
    began = time.perf_counter()
    subprocess.run([*args, "--output_dir", str(whole)], check=True, env=env, capture_output=True)
    return args, env, whole, time.perf_counter() - began


@pytest.mark.long  # (interrupt and resume in make test: test_bad_input's signal test)
@pytest.mark.parametrize("kill_after", [0.35, 0.7])
def test_sigkill_at_a_random_moment_then_resume_ends_identical(tmp_path, uninterrupted, kill_after):
    """The real CLI in a subprocess, SIGKILLed part-way (the kill point is a fraction of an uninterrupted run's
    time, with jitter), then ``--resume``: same final adapter as the uninterrupted run."""
    args, env, whole, whole_seconds = uninterrupted
    killed = tmp_path / "killed"
    process = subprocess.Popen([*args, "--output_dir", str(killed)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    time.sleep(whole_seconds * kill_after * np.random.default_rng().uniform(0.9, 1.1))
    process.send_signal(signal.SIGKILL)
    process.wait()
    subprocess.run([*args, "--output_dir", str(killed), "--resume", "true"], check=True, env=env,
                   capture_output=True)
    from safetensors.torch import load_file
    want = load_file(whole / "adapter" / "adapter_model.safetensors")
    got = load_file(killed / "adapter" / "adapter_model.safetensors")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    with open(killed / "metrics.csv") as f:
        assert {r["round"] for r in csv.DictReader(f)} == {str(r) for r in range(5)}


def test_under_client_level_dp_an_unclipped_update_is_excluded(loops, tmp_path):
    from fedlit.privacy import ClientDPConfig

    loop = five_clients(loops, tmp_path, "dp", faults=FaultPolicy(min_clients=3),
                        privacy=ClientDPConfig(noise_multiplier=0.5, clip_norm=0.1))
    loop.clients["client-001"] = FaultyClient("client-001", loop.clients["client-001"].datamodule)
    FaultyClient.fault = "norm"
    loop.fit()
    rows = {r["client"]: r for r in loop.history if r["split"] == "train"}
    assert "exceeds the bound 0.1" in rows["client-001"]["excluded"]
    assert all("excluded" not in r and r["update_norm"] <= 0.1 * (1 + 1e-5) for c, r in rows.items()
               if c != "client-001")


def test_exclusions_are_counted_by_reason_in_the_last_line_and_the_summary():
    from fedlit.cli import exclusions_note
    from fedlit.tracking import run_summary

    history = [{"round": 1, "client": "a", "split": "train", "loss": 1.0},
               {"round": 1, "client": "b", "split": "train", "excluded": "ClientTimeout: client 'b' did not finish"},
               {"round": 2, "client": "b", "split": "train", "excluded": "ClientTimeout: client 'b' did not finish"},
               {"round": 2, "client": "c", "split": "train", "excluded": "non-finite values (NaN/Inf) in [w]"},
               {"round": 2, "client": "c", "split": "val", "excluded": "WorkerDied: the worker died"},
               {"round": 2, "client": "a", "split": "val", "loss": 1.0}]
    assert exclusions_note(history) == ("; 3 client fits excluded (ClientTimeout x2, non-finite values (NaN/Inf) in "
                                        "[w] x1), 1 evaluation missing (WorkerDied x1)")
    summary = run_summary(history)
    assert summary["summary/clients_excluded"] == 3 and summary["summary/evaluations_missing"] == 1
    assert exclusions_note(history[:1]) == ""
