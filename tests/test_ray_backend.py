"""RayBackend: the same results as LocalBackend, worker failures as client faults, secrets only in workers."""

import csv
import gc
import os
import signal
import subprocess
import sys
import time
import weakref

import pytest
import torch
import yaml

pytest.importorskip("ray")

import ray.cloudpickle  # noqa: E402

from fedlit.backends import LocalBackend, RayBackend  # noqa: E402
from fedlit.backends.freed_memory import settle_heap  # noqa: E402
from fedlit.client import Client  # noqa: E402
from fedlit.compression import CompressionConfig  # noqa: E402
from fedlit.faults import FaultPolicy  # noqa: E402
from fedlit.privacy import ClientDPConfig  # noqa: E402
from fedlit.secret_audit import clients_secrets, watch  # noqa: E402
from fedlit.secure import SecureAggregationConfig  # noqa: E402
from fedlit.strategies import FedAdam, FedAvg  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests package

SETTINGS = {  # fresh objects per run: a server optimiser keeps state
    "fedavg": lambda: {"strategy": FedAvg(clients_per_round=3)},
    "fedadam": lambda: {"strategy": FedAdam(clients_per_round=3, server_lr=0.05)},
    "secure": lambda: {"strategy": FedAvg(clients_per_round=3),
                       "secure_aggregation": SecureAggregationConfig(neighbours=2)},
    "client-dp": lambda: {"strategy": FedAvg(clients_per_round=3),
                          "privacy": ClientDPConfig(noise_multiplier=0.5, clip_norm=0.5),
                          "insecure_seed": 1},  # the noise pinned: both runs draw the same
    "compressed": lambda: {"strategy": FedAvg(clients_per_round=2),  # error feedback: state a client keeps
                           "compression": CompressionConfig(bits=2)},
}


def rows(path):
    with open(path / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


# masking (state across rounds) and plain FedAvg in the default suite; error feedback and the
# rest, whose server step runs in the driver whatever the backend, in `make test-long` (CI's 15 minutes)
IN_LONG = {"fedadam", "client-dp", "compressed"}


@pytest.mark.parametrize(("setting", "workers"), [
    pytest.param(setting, 2, marks=[pytest.mark.long] if setting in IN_LONG else []) for setting in SETTINGS
] + [pytest.param("fedavg", 1, marks=pytest.mark.long)])
def test_local_and_ray_give_identical_runs(make_loop, tmp_path, one_thread, setting, workers):
    local = make_loop(rounds=2, output_dir=tmp_path / "local", backend=LocalBackend(), **SETTINGS[setting]()).fit()
    remote = make_loop(rounds=2, output_dir=tmp_path / "ray", backend=RayBackend(num_workers=workers),
                       **SETTINGS[setting]()).fit()
    assert local.keys() == remote.keys() and all(torch.equal(local[n], remote[n]) for n in local)
    assert rows(tmp_path / "local") == rows(tmp_path / "ray")


class DyingClient(Client):
    """Its worker process dies in the middle of its fit (as an out-of-memory kill would)."""

    def fit(self, ins, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.long  # (a fault on Ray in make test: the deadline test, whose stuck worker is replaced)
def test_a_worker_that_dies_mid_fit_excludes_its_client_and_the_run_goes_on(make_loop, tmp_path):
    loop = make_loop(strategy=FedAvg(clients_per_round=3), rounds=2, backend=RayBackend(num_workers=2),
                     faults=FaultPolicy(min_clients=2))
    loop.clients["beta"] = DyingClient("beta", loop.clients["beta"].datamodule)
    loop.fit()
    train = [r for r in loop.history if r["split"] == "train"]
    dead = [r for r in train if r["client"] == "beta"]
    assert len(dead) == 2 and all("WorkerDied" in r["excluded"] for r in dead)
    assert all("excluded" not in r for r in train if r["client"] != "beta")
    assert loop.records.trained_rounds() == [1, 2]


def test_secure_aggregation_secrets_never_exist_in_the_driver(make_loop, tmp_path, one_thread):
    config = SecureAggregationConfig(neighbours=2)
    backend = RayBackend(num_workers=2)
    with watch() as seen:  # every copy made in the driver is counted, also one that lives only for a moment
        remote = make_loop(strategy=FedAvg(clients_per_round=3), rounds=1, secure_aggregation=config,
                           output_dir=tmp_path / "ray", backend=backend).fit()
    assert clients_secrets(seen) == 0  # no client state here
    local = make_loop(strategy=FedAvg(clients_per_round=3), rounds=1, secure_aggregation=config,
                      output_dir=tmp_path / "local", backend=LocalBackend()).fit()
    assert all(torch.equal(local[n], remote[n]) for n in local)  # ... yet the masked sum came out right


@pytest.mark.long  # resume after SIGKILL (test_faults) and Ray == Local (above) are each in the default suite
def test_resume_after_sigkill_of_the_driver_under_ray_is_identical(tmp_path, tiny_model_dir, plays_jsonl):
    config = tmp_path / "ray.yaml"
    config.write_text(yaml.safe_dump({"backend": {"class_path": "fedlit.backends.RayBackend",
                                                  "init_args": {"num_workers": 2}}}))
    args = [sys.executable, "-m", "fedlit.cli", "fit", "--config", str(config), "--model.name_or_path",
            str(tiny_model_dir), "--data.source", str(plays_jsonl), "--data.num_clients", "3",
            "--data.val_examples_per_client", "2", "--data.global_val_examples", "4", "--data.max_length", "32",
            "--data.batch_size", "4", "--rounds", "3", "--trainer.max_steps", "3", "--trainer.accelerator", "cpu",
            "--strategy.init_args.clients_per_round", "3", "--progress", "false", "--loggers", "[]"]
    subprocess.run([*args, "--output_dir", str(tmp_path / "whole")], check=True, capture_output=True)
    killed = tmp_path / "killed"
    process = subprocess.Popen([*args, "--output_dir", str(killed)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    began = time.monotonic()
    while not (killed / "checkpoints" / "round-0001.ckpt").exists():
        assert time.monotonic() - began < 120 and process.poll() is None
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started
    process.wait()
    subprocess.run([*args, "--output_dir", str(killed), "--resume", "true"], check=True, capture_output=True)
    from safetensors.torch import load_file

    want = load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors")
    got = load_file(killed / "adapter" / "adapter_model.safetensors")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert rows(tmp_path / "whole") == rows(killed)


class HangingClient(Client):
    def fit(self, ins, *args, **kwargs):
        time.sleep(60)


def test_the_deadline_holds_on_ray_and_the_stuck_worker_is_replaced(make_loop, tmp_path):
    loop = make_loop(strategy=FedAvg(clients_per_round=3), rounds=1, backend=RayBackend(num_workers=2),
                     faults=FaultPolicy(timeout_s=8, min_clients=2))
    loop.clients["gamma"] = HangingClient("gamma", loop.clients["gamma"].datamodule)
    began = time.monotonic()
    loop.fit()
    assert time.monotonic() - began < 90  # (the hung fit sleeps 60 s; replacing a worker waits for the new one)
    (stuck,) = [r for r in loop.history if r["split"] == "train" and r["client"] == "gamma"]
    assert "ClientTimeout: client 'gamma' did not finish its fit within 8 s" in stuck["excluded"]
    assert loop.records.trained_rounds() == [1]


class HangingApp:
    """A client app whose every call but ``describe`` hangs (as a stuck protocol stage or evaluation would)."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id

    def describe(self, _):
        return self.client_id

    def evaluate(self, _):
        time.sleep(120)

    secagg_setup = query = evaluate


@pytest.mark.long  # (the deadline on a fit, and the worker replaced: test_the_deadline_holds_on_ray_...)
def test_every_call_has_the_deadline_not_only_fit(tmp_path):
    backend = RayBackend(num_workers=2)
    backend.start(HangingApp, timeout_s=3)
    try:
        began = time.monotonic()
        replies = backend.call("evaluate", {"a": b"", "b": b""})
        assert time.monotonic() - began < 60  # (the calls hang for 120 s)
        assert all("ClientTimeout: client" in r.reason and "did not finish its evaluate within 3 s" in r.reason
                   for r in replies.values())
        assert backend.call("describe", {"a": None}) == {"a": "a"}  # the stuck workers were replaced
    finally:
        backend.close()
        ray.shutdown()


def test_an_address_where_no_cluster_listens_is_refused_in_one_line_at_once():
    ray.shutdown()  # (a cluster left running by an earlier test would be joined instead)
    began = time.monotonic()
    with pytest.raises(ConnectionError, match=r"backend.address 127.0.0.1:1: no Ray cluster answers there"):
        RayBackend(address="127.0.0.1:1").start(HangingApp, None)
    assert time.monotonic() - began < 15


@pytest.mark.parametrize("config", ["fedost", *(pytest.param(name, marks=pytest.mark.long)
                                               for name in ("fedhetero", "fedco", "fedhomo_dp", "example_dp"))])
def test_every_algorithm_runs_on_ray(config, tmp_path, tiny_model_dir, plays_jsonl):
    """Each algorithm's shipped config (tiny model, one round) on two Ray workers."""
    from pathlib import Path

    from test_cli import shipped_config_args

    from fedlit.cli import main

    name = "quickstart" if config == "example_dp" else config
    args = shipped_config_args(Path(__file__).parent.parent / "configs" / f"{name}.yaml", tmp_path, tiny_model_dir,
                               plays_jsonl)
    extra = ["--example_privacy", '{"noise_multiplier": 0.5}'] if config == "example_dp" else []
    main([*args, *extra, "--backend", '{"class_path": "fedlit.backends.RayBackend", "init_args": {"num_workers": 2}}'])
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    with open(tmp_path / "run" / "metrics.csv") as f:
        train = [r for r in csv.DictReader(f) if r["split"] == "train"]
    assert train and not any(r["excluded"] for r in train)
    if config == "example_dp":
        assert all(float(r["epsilon"]) > 0 for r in train)


class EnvironmentApp:
    """A client app that reports what its worker process sees."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id

    def describe(self, _):
        from transformers.integrations.hub_kernels import _kernels_enabled

        from fedlit.hub_code import hub_code_allowed

        return {"transformers_kernels": _kernels_enabled(), "hub_code": hub_code_allowed(), "pid": os.getpid(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "gpu_ids": ray.get_gpu_ids()}


@pytest.mark.parametrize(("workers", "share", "placed"), [
    (2, 1, ["0", "1"]), pytest.param(4, 0.5, ["0", "0", "1", "1"], marks=pytest.mark.long)])
def test_workers_keep_hub_code_off_and_see_their_logical_gpu(monkeypatch, workers, share, placed):
    """Started from a driver whose environment turns transformers' Hub kernels on, every worker has them off
    (transformers' own check) and the ``kernels`` fetchers refused; on 2 (logical) GPUs each worker sees the GPU Ray
    gave it as CUDA_VISIBLE_DEVICES (with 0.5 GPU each: two per GPU); a pool that cannot fit is refused."""
    ray.shutdown()
    monkeypatch.setenv("USE_HUB_KERNELS", "YES")
    monkeypatch.delenv("FEDLIT_HUB_CODE", raising=False)
    backend = RayBackend(num_workers=workers, gpus_per_worker=share, gpus=2)
    backend.start(EnvironmentApp, None)
    try:
        seen = backend.call("describe", {str(i): None for i in range(workers)})
        assert len({reply["pid"] for reply in seen.values()}) == workers
        assert not any(reply["transformers_kernels"] or reply["hub_code"] for reply in seen.values())
        assert sorted(reply["cuda_visible_devices"] for reply in seen.values()) == placed
        assert sorted(reply["gpu_ids"][0] for reply in seen.values()) == [int(gpu) for gpu in placed]
        with pytest.raises(ValueError, match=rf"{workers + 1} workers x {share:g} GPU do not fit the Ray cluster's "
                                             rf"2 GPU\(s\) \({workers} at most\)"):
            RayBackend(num_workers=workers + 1, gpus_per_worker=share).start(EnvironmentApp, None)
    finally:
        backend.close()
        ray.shutdown()


def test_fractional_gpus_pack_whole_workers_per_gpu():
    with pytest.raises(ValueError, match=r"5 workers x 0.25 GPU do not fit the Ray cluster's 1 GPU\(s\) \(4 at most"):
        RayBackend(num_workers=5, gpus_per_worker=0.25)._check_gpus(1.0)
    RayBackend(num_workers=4, gpus_per_worker=0.25)._check_gpus(1.0)
    with pytest.raises(ValueError, match=r"3 workers x 0.4 GPU do not fit the Ray cluster's 1.5 GPU\(s\) \(2 at"):
        RayBackend(num_workers=3, gpus_per_worker=0.4)._check_gpus(1.5)  # a share is never split across GPUs
    with pytest.raises(ValueError, match="above 1 it must be a whole number of GPUs"):
        RayBackend(gpus_per_worker=1.5)


def mapping_of(tensor: torch.Tensor) -> str:
    """The memory mapping that holds ``tensor``'s data in this process: ``private`` (the heap or an anonymous
    mapping), else the mapped file's name (Ray's shared object store: ``/dev/shm/plasma...``)."""
    address = tensor.data_ptr()
    for line in open("/proc/self/maps"):
        parts = line.split()
        low, high = (int(x, 16) for x in parts[0].split("-"))
        if low <= address < high:
            return "private" if len(parts) < 6 or parts[5] == "[heap]" else parts[5]
    return "(unmapped)"


def digest(tensor: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(tensor.detach().numpy().tobytes()).hexdigest()


class SharedBaseApp:
    """Reports where its frozen and its trainable parameter live, after writing to the trainable one."""

    def __init__(self, client_id: str, model: torch.nn.Module) -> None:
        self.client_id, self.model = client_id, model

    def describe(self, _):
        with torch.no_grad():
            self.model.adapter.add_(1.0)
        return {"frozen": mapping_of(self.model.base.weight), "frozen_digest": digest(self.model.base.weight),
                "trainable": mapping_of(self.model.adapter), "adapter_sum": float(self.model.adapter.sum()),
                "pid": os.getpid()}


class SharedBaseApps:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __call__(self, client_id: str) -> SharedBaseApp:
        return SharedBaseApp(client_id, self.model)


def test_the_workers_and_the_driver_map_one_copy_of_the_frozen_base():
    """A frozen weight reaches the workers as a view of Ray's shared object store (one copy per node), and the
    driver's own parameter then points there too; a trainable one is each worker's own, written privately."""
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.base = torch.nn.Linear(512, 512, bias=False).requires_grad_(False)
    model.adapter = torch.nn.Parameter(torch.zeros(512, 64))
    frozen = digest(model.base.weight)
    assert mapping_of(model.base.weight) == "private"
    backend = RayBackend(num_workers=2)
    backend.start(SharedBaseApps(model), None)
    try:
        seen = backend.call("describe", {"a": None, "b": None})
        assert len({reply["pid"] for reply in seen.values()}) == 2
        for reply in seen.values():
            assert "plasma" in reply["frozen"] and reply["frozen_digest"] == frozen
            assert reply["trainable"] == "private" and reply["adapter_sum"] == 512 * 64  # its own write only
        assert "plasma" in mapping_of(model.base.weight) and digest(model.base.weight) == frozen
        assert mapping_of(model.adapter) == "private" and float(model.adapter.sum()) == 0
    finally:
        backend.close()
        ray.shutdown()


def test_a_worker_settles_its_heap_after_each_call_cyclic_garbage_freed_and_long_lived_objects_frozen():
    class Node:
        pass

    enabled = gc.isenabled()
    gc.disable()  # only settle_heap may collect here
    try:
        node = Node()
        node.itself, node.weights = node, torch.zeros(1 << 18)
        alive = weakref.ref(node)
        del node
        assert alive() is not None  # a cycle: reference counting alone keeps it
        settle_heap()
        assert alive() is None
        settle_heap(freeze=True)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()
