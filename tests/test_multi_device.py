"""A client whose fit spans devices: two CPU ranks over gloo (DDP) train the same update as one process on the same
global batch (the plays' lines differ in length, so the ranks' token counts do); only the process that answers the
server writes the client's files; the ranks start as children of the fit (Lightning's own ``ddp`` would run the
whole command again in each)."""

import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import with_federation
from peft import LoraConfig
from torch.utils.data import DataLoader, DistributedSampler

from fedlit.algorithms import fed_homo_llm
from fedlit.data import DataConfig
from fedlit.devices import build_trainer, spans_devices
from fedlit.faults import ClientTimeout, UnusableUpdate, deadline
from fedlit.lightning_modules import OptimizerConfig
from fedlit.models import ModelConfig
from fedlit.multi_device import SpanningDDP, spanning_strategy
from fedlit.privacy import ExampleDPConfig
from fedlit.secure import SecureAggregationConfig
from fedlit.strategies import FedAvg, Scaffold

PER_RANK_BATCH = 2


def run(model_dir: Path, data: Path, output_dir: Path, batch_size: int, trainer: dict, strategy=None,
        rank: int = 4, **federation):
    """One round of FedHomoLLM with both clients, plain SGD, no dropout, LoRA of ``rank`` on q and v."""
    return fed_homo_llm(**with_federation(dict(
        model=ModelConfig(str(model_dir)),
        data=DataConfig(source=str(data), num_clients=2, train_examples_per_client=8, val_examples_per_client=2,
                        global_val_examples=2, batch_size=batch_size, max_length=64),
        peft=LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
        optimizer=OptimizerConfig(lr=0.5, name="sgd"), strategy=strategy or FedAvg(), rounds=1,
        output_dir=str(output_dir), loggers=[], progress=False,
        trainer_kwargs={"max_steps": 3, "accelerator": "cpu", **trainer}, **federation)))


def in_distributed_order(loop) -> None:
    """The single-process reference: each client draws its global batches in the order DDP's ranks share them out
    (Lightning's DistributedSampler, seeded with the fit's seed: rank r takes every other index of one permutation,
    so global batch k is the permutation's k-th slice of 2 x ``PER_RANK_BATCH``)."""
    for client in loop.clients.values():
        data = client.datamodule

        def train_dataloader(data=data) -> DataLoader:
            sampler = DistributedSampler(data.train_dataset, num_replicas=1, rank=0, shuffle=True,
                                         seed=int(os.environ["PL_GLOBAL_SEED"]))
            return DataLoader(data.train_dataset, batch_size=data.batch_size, sampler=sampler, collate_fn=data.collate)

        data.train_dataloader = train_dataloader


def gaps(got: dict, expected: dict, start: dict) -> tuple[float, float]:
    """How far the reference moved from the start, and how far ``got`` is from it (largest element)."""
    moved = max(float((expected[n] - start[n]).abs().max()) for n in expected)
    return moved, max(float((got[n] - expected[n]).abs().max()) for n in expected)


@pytest.fixture
def reference(tiny_model_dir, plays_jsonl, tmp_path) -> tuple[dict, dict]:
    """The single-process run on the global batches of two ranks: the global adapter it starts from and ends at."""
    loop = run(tiny_model_dir, plays_jsonl, tmp_path / "one", 2 * PER_RANK_BATCH, {})
    in_distributed_order(loop)
    start = {n: t.clone() for n, t in loop.module_factory().trainable_state_dict().items()}
    return start, loop.fit()


# spawned ranks (`ddp`, the default) in `make test-long`, forked ones (a second each) in `make test` (15 minutes)
@pytest.mark.parametrize("strategy", [pytest.param("ddp", marks=pytest.mark.long), "ddp_fork"])
def test_a_two_rank_ddp_client_trains_the_update_of_one_process_on_the_same_global_batch(
        tiny_model_dir, plays_jsonl, tmp_path, reference, strategy):
    start, expected = reference
    got = run(tiny_model_dir, plays_jsonl, tmp_path / "two", PER_RANK_BATCH, {"devices": 2, "strategy": strategy}
              ).fit()
    assert set(got) == set(expected)
    moved, gap = gaps(got, expected, start)
    assert moved > 1e-2 and gap < 1e-6, (moved, gap)


@pytest.mark.long
def test_on_ray_a_worker_that_owns_two_devices_trains_the_same_update(tiny_model_dir, plays_jsonl, tmp_path, reference):
    """A Ray actor with two CPUs runs the client's two ranks (spawned from the actor)."""
    from fedlit.backends import RayBackend

    start, expected = reference
    got = run(tiny_model_dir, plays_jsonl, tmp_path / "ray", PER_RANK_BATCH, {"devices": 2, "strategy": "ddp"},
              backend=RayBackend(num_workers=1, cpus_per_worker=2)).fit()
    moved, gap = gaps(got, expected, start)
    assert moved > 1e-2 and gap < 1e-6, (moved, gap)


def test_forked_ranks_reproduce_a_fit_and_the_clients_files_are_written_once(tiny_model_dir, plays_jsonl, tmp_path):
    """Two runs with the same seed agree bit for bit; SCAFFOLD's variates (each client's own file) are written by
    the process that answers the server, one per client."""
    results = [run(tiny_model_dir, plays_jsonl, tmp_path / name, PER_RANK_BATCH,
                   {"devices": 2, "strategy": "ddp_fork"}, strategy=Scaffold(FedAvg())).fit() for name in "ab"]
    assert all(torch.equal(results[0][n], results[1][n]) for n in results[0])
    assert len(sorted((tmp_path / "a" / "client_state").rglob("scaffold_control-*.safetensors"))) == 2


def spanning_fit(make_loop, callbacks=(), rank: int = 4):
    """A client's module and data from the tiny run (LoRA of ``rank``) and a two-rank forked Trainer of one step."""
    loop = make_loop(peft=LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"],
                                     lora_dropout=0.0))
    module, data = loop.module_factory(), next(iter(loop.clients.values())).datamodule
    trainer = build_trainer(accelerator="cpu", devices=2, strategy="ddp_fork", max_steps=1, callbacks=list(callbacks),
                            logger=False, enable_checkpointing=False, enable_progress_bar=False)
    return module, data, trainer


def test_an_update_larger_than_a_pipe_holds_comes_back(make_loop):
    """Rank 0's results do not go through Lightning's queue, which is read only once every rank has exited (a put
    larger than the pipe's 64 KiB would wait for ever)."""
    module, data, trainer = spanning_fit(make_loop, rank=256)
    start = {n: t.clone() for n, t in module.trainable_state_dict().items()}
    with deadline(120, "rank 0"):
        trainer.fit(module, datamodule=data)
    trained = module.trainable_state_dict()
    assert sum(t.numel() * t.element_size() for t in trained.values()) > 2 * 2**16
    assert any(not torch.equal(trained[n], start[n]) for n in start)


def test_a_deadline_in_the_fit_ends_its_ranks(make_loop):
    class Stuck(L.Callback):
        def on_train_start(self, trainer, pl_module):
            time.sleep(60)

    module, data, trainer = spanning_fit(make_loop, [Stuck()])
    with pytest.raises(ClientTimeout), deadline(3, "alpha"):
        trainer.fit(module, datamodule=data)
    assert len(trainer.strategy.launcher.procs) == 2
    assert not any(process.is_alive() for process in trainer.strategy.launcher.procs)


def test_a_masked_update_comes_back_from_rank_0(tiny_model_dir, plays_jsonl, tmp_path, reference):
    """Secure aggregation: the masked vector is built on rank 0 and unmasked by the server as usual."""
    start, expected = reference
    got = run(tiny_model_dir, plays_jsonl, tmp_path / "masked", PER_RANK_BATCH, {"devices": 2, "strategy": "ddp_fork"},
              secure_aggregation=SecureAggregationConfig(allow_fewer_than_three=True)).fit()
    moved, gap = gaps(got, expected, start)
    assert gap < 1e-4 * moved, (moved, gap)  # (fixed point: the sum's resolution)


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("not this one")


@pytest.mark.parametrize(("failing", "raised", "match"), [
    ((0, 1), UnusableUpdate, "rank [01] failed"),
    ((1,), UnusableUpdate, "rank 1 failed"),  # (rank 0 meanwhile waits for its peer in the first all-reduce)
    ((0,), RuntimeError, "rank 0 of the fit failed:(.|\n)*Unpicklable: rank 0 failed"),
])
def test_an_exception_in_a_rank_is_raised_in_the_fit_as_itself(make_loop, tmp_path, monkeypatch, failing, raised,
                                                                 match):
    """The first rank's exception, as itself (an unusable update stays the client's fault), or its traceback where
    it does not pickle; no traceback file is left in the temp directory."""
    class Failing(L.Callback):
        def on_train_start(self, trainer, pl_module):
            if trainer.global_rank in failing:
                error = UnusableUpdate if raised is UnusableUpdate else Unpicklable
                raise error(f"rank {trainer.global_rank} failed")

    scratch = tmp_path / "temp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    module, data, trainer = spanning_fit(make_loop, [Failing()])
    with pytest.raises(raised, match=match), deadline(120, "rank 0"):
        trainer.fit(module, datamodule=data)
    assert list(scratch.iterdir()) == []


@pytest.mark.long
def test_the_command_with_two_devices_runs_the_federation_once(tiny_model_dir, plays_jsonl, tmp_path):
    """``python -m fedlit fit --trainer.devices 2``: the ranks are the fit's (Lightning's own ``ddp`` would run the
    command again in each); one round of both clients, each on its 8 examples."""
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "fedlit", "fit", "--model.name_or_path", str(tiny_model_dir),
                    "--data.source", str(plays_jsonl), "--data.num_clients", "2", "--data.train_examples_per_client",
                    "8", "--data.val_examples_per_client", "2", "--data.global_val_examples", "2",
                    "--data.max_length", "16", "--data.batch_size", str(PER_RANK_BATCH), "--rounds", "1",
                    "--trainer.max_steps", "2", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                    "--trainer.strategy", "ddp", "--progress", "false", "--loggers", "[]", "--output_dir", str(out)],
                   check=True, capture_output=True, timeout=300)
    with (out / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    fits = [row for row in rows if row["split"] == "train"]
    assert sorted(row["client"] for row in fits) == ["alpha", "beta"]
    assert all(row["round"] == "1" and row["num_examples"] == "8" for row in fits)


def test_the_trainer_options_that_span_devices_start_ranks_that_return_here():
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    assert isinstance(build_trainer(accelerator="cpu", devices=2, **quiet).strategy, SpanningDDP)
    assert build_trainer(accelerator="cpu", devices=2, strategy="ddp", **quiet).strategy._start_method == "spawn"
    assert spanning_strategy("ddp_fork_find_unused_parameters_true")._ddp_kwargs == {"find_unused_parameters": True}
    assert spans_devices({"accelerator": "cpu", "devices": 2}) and not spans_devices({"accelerator": "cpu"})
    with pytest.raises(ValueError, match="trainer.strategy .deepspeed.: a client fit spans devices with DDP only"):
        spanning_strategy("deepspeed")
    with pytest.raises(ValueError, match="start_method 'popen'"):
        SpanningDDP(start_method="popen")


def test_dp_sgd_on_several_devices_is_refused_before_the_run(tiny_model_dir, plays_jsonl, tmp_path):
    with pytest.raises(ValueError, match="example_privacy .DP-SGD. runs on one device"):
        run(tiny_model_dir, plays_jsonl, tmp_path / "dp", PER_RANK_BATCH, {"devices": 2},
            example_privacy=ExampleDPConfig(noise_multiplier=1.0, max_grad_norm=1.0))
