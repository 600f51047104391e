"""Deployment on Flower: a real SuperLink and three SuperNodes as separate OS processes on localhost, each party
with its own data file, over TLS with SuperNode authentication; the runs match LocalBackend's (FedHomoLLM with
secure aggregation, FedHeteroLLM, FedOST, FedCoLLM), survive a SuperNode killed mid-round and a server restart.
The tests marked ``deployment_long`` take minutes each (Flower notices a dead SuperNode by its missed
heartbeats, restarted SuperNodes back off, every run starts its ClientApp processes afresh): ``make test``
leaves them to ``make test-deployment``."""

from __future__ import annotations

import contextlib
import csv
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

pytest.importorskip("flwr")

from conftest import PLAYS, play_records  # noqa: E402
from deployment import LocalDeployment  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

pytestmark = pytest.mark.deployment
COMPARED = ["round", "client", "split", "loss", "perplexity", "token_accuracy", "num_examples", "bytes_received",
            "bytes_sent", "epsilon", "excluded"]


SHARED_DATA = {"val_examples_per_client": 4, "batch_size": 4, "max_length": 32}  # the parties add their source


def fedhomo(model_dir: Path) -> dict:
    """FedHomoLLM's settings for these runs: LoRA on the tiny model, secure aggregation, 2 rounds."""
    return {"rounds": 2, "progress": False, "model": {"name_or_path": str(model_dir)},
            "peft": {"class_path": "peft.LoraConfig",
                     "init_args": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
            "optimizer": {"lr": 0.01}, "secure_aggregation": {}, "trainer": {"max_steps": 3, "accelerator": "cpu"}}


def server_config(directory: Path, name: str, settings: dict) -> Path:
    """The server's config file: ``settings`` and the shared data format, no client's data path."""
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**settings, "output_dir": str(directory / name), "data": SHARED_DATA}))
    return path


def run_locally(command: str, settings: dict, output_dir: Path, plays_jsonl: Path) -> Path:
    """``settings`` on LocalBackend, every client's data in this process; it holds back 6 global held-out
    records, 2 per client, as each party does."""
    from fedlit.cli import compose, fit_parser

    parser = fit_parser(command)
    data = {**SHARED_DATA, "source": str(plays_jsonl), "num_clients": 3, "global_val_examples": 6}
    compose(command, parser.parse_object({**settings, "output_dir": str(output_dir), "loggers": [], "data": data}),
            parser).fit()
    return output_dir


def party_files(root: Path) -> dict[str, Path]:
    """Each party's records in its own file under ``root``, and its party-config naming it (by client id)."""
    records, parties = play_records(), {}
    for play in PLAYS:
        data = root / f"{play}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records if r["play"] == play))
        # each party holds back 2 global held-out records, as the local runs do per client (run_locally)
        parties[play] = root / f"{play}-party.yaml"
        parties[play].write_text(yaml.safe_dump({"data": {"source": str(data), "num_clients": 1,
                                                          "global_val_examples": 2}}))
    return parties


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory):
    """The parties' files; the SuperLink and SuperNodes up."""
    root = tmp_path_factory.mktemp("deployment")
    deployment = LocalDeployment(root, party_files(root)).start()
    yield deployment
    deployment.stop()


@pytest.fixture(scope="module")
def local_reference(tiny_model_dir: Path, plays_jsonl: Path, deployment: LocalDeployment) -> Path:
    """The same run on LocalBackend."""
    return run_locally("fit", fedhomo(tiny_model_dir), deployment.root / "local", plays_jsonl)


def rows(output_dir: Path) -> list[dict[str, str]]:
    with open(output_dir / "metrics.csv") as f:
        return [{k: row[k] for k in COMPARED} for row in csv.DictReader(f) if row["client"] != "global"]


def assert_same_run(run: Path, reference: Path, adapter_file: str = "adapter/adapter_model.safetensors") -> None:
    assert rows(run) == rows(reference)
    got, want = load_file(run / adapter_file), load_file(reference / adapter_file)
    assert got.keys() == want.keys()
    assert all((got[k] == want[k]).all() for k in want)  # bit-identical: masking is exact in the ring


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


def test_one_deployed_round_matches_local_backend(deployment, tiny_model_dir, plays_jsonl):
    """The default suite's deployment run: one round in the clear (every ClientApp message starts a process that
    loads fedlit, so each protocol stage costs seconds; masking is checked end to end below, in the long suite)."""
    settings = {**fedhomo(tiny_model_dir), "rounds": 1, "secure_aggregation": None}
    config = server_config(deployment.root, "clear", settings)
    assert "jsonl" not in config.read_text()  # the server's config names no client's data
    assert deployment.deploy(config).wait(timeout=600) == 0, deployment.log("deploy")[-3000:]
    assert_same_run(deployment.root / "clear", run_locally("fit", settings, deployment.root / "local-1", plays_jsonl))
    # transformers' own Hub-kernel check, in the ServerApp's process and in each party's (started with it on)
    record = json.loads((deployment.root / "clear" / "deployment.json").read_text())
    assert record["hub_code"] == {"server": False, "parties": {"alpha": False, "beta": False, "gamma": False}}


@pytest.mark.deployment_long
def test_dp_noise_shares_are_drawn_by_the_parties_and_never_exist_in_the_server(deployment, tiny_model_dir,
                                                                                plays_jsonl):
    """Client-level DP with noise shares under masking: each party draws its share from its own secret (pinned
    here by insecure_seed on both sides, so the deployed run can be compared with a local one), and no client
    secret comes into being in the ServerApp's process during the run."""
    settings = {**fedhomo(tiny_model_dir), "rounds": 1, "insecure_seed": 3,
                "privacy": {"noise_multiplier": 0.5, "clip_norm": 0.5}, "faults": {"min_clients": 3}}
    config = server_config(deployment.root, "dp", settings)
    assert deployment.deploy(config).wait(timeout=600) == 0, deployment.log("deploy")[-3000:]
    assert_same_run(deployment.root / "dp", run_locally("fit", settings, deployment.root / "local-dp", plays_jsonl))
    record = json.loads((deployment.root / "dp" / "deployment.json").read_text())
    assert record["client_secrets_in_server_process"] == 0


@pytest.mark.deployment_long
def test_client_level_dp_and_dp_sgd_across_processes_equal_local_backend_epsilon_rows_included(
        deployment, tiny_model_dir, plays_jsonl):
    """Client-level DP in the clear (the server adds the noise) with DP-SGD in every party, two rounds, so that
    each party's DP-SGD epsilon counts the steps of both (it keeps its count in its own state directory, across the
    processes Flower starts per message); noise pinned by insecure_seed on both sides. (Client-level DP with noise
    shares under secure aggregation: the test above.)"""
    settings = {**fedhomo(tiny_model_dir), "secure_aggregation": None, "insecure_seed": 5,
                "privacy": {"noise_multiplier": 0.5, "clip_norm": 0.5},
                "example_privacy": {"noise_multiplier": 0.5, "max_grad_norm": 1.0, "delta": 1e-3}}
    config = server_config(deployment.root, "dp-both", settings)
    assert deployment.deploy(config).wait(timeout=900) == 0, deployment.log("deploy")[-3000:]
    local = run_locally("fit", settings, deployment.root / "local-dp-both", plays_jsonl)
    assert_same_run(deployment.root / "dp-both", local)
    with_epsilon = [(r["client"], r["split"]) for r in rows(local) if r["epsilon"]]
    assert with_epsilon.count(("server", "privacy")) == 2 and len(with_epsilon) == 2 + 2 * len(PLAYS)


def test_a_supernode_with_an_unregistered_key_is_refused(deployment):
    rogue = deployment.start_supernode("gamma", key="rogue")
    assert rogue.wait(timeout=120) != 0
    assert "Failed to activate SuperNode" in deployment.log("rogue")


@pytest.mark.deployment_long
def test_server_restart_with_resume_finishes_like_an_uninterrupted_run(deployment, local_reference, tiny_model_dir):
    config = server_config(deployment.root, "restarted", fedhomo(tiny_model_dir))
    deployment.deploy(config)
    checkpoint = deployment.root / "restarted" / "checkpoints" / "round-0001.ckpt"
    wait_for(checkpoint.exists, 600, "no round-1 checkpoint")
    deployment.kill("superlink")  # the server process (SuperLink with its ServerApp) dies mid-run
    deployment.kill("deploy")
    deployment.start_superlink()  # the SuperNodes reconnect by themselves
    assert deployment.deploy(config, "--resume", "true").wait(timeout=600) == 0, deployment.log("deploy")[-3000:]
    assert_same_run(deployment.root / "restarted", local_reference)


@pytest.mark.deployment_long
def test_a_supernode_killed_mid_round_is_a_dropout(deployment, tiny_model_dir):
    config = server_config(deployment.root, "dropout",
                           {**fedhomo(tiny_model_dir), "rounds": 1, "faults": {"timeout_s": 30}})
    run = deployment.deploy(config, "--reply_timeout_s", "30")
    metrics = deployment.root / "dropout" / "metrics.csv"
    wait_for(metrics.exists, 600, "round 0 never finished")  # round 0 evaluated: round 1 is starting
    deployment.kill("gamma", signal.SIGKILL)
    assert run.wait(timeout=600) == 0, deployment.log("deploy")[-3000:]
    trained = {row["client"]: row for row in rows(deployment.root / "dropout")
               if row["round"] == "1" and row["split"] == "train"}
    assert trained["gamma"]["excluded"], trained
    assert not trained["alpha"]["excluded"] and not trained["beta"]["excluded"]
    deployment.start_supernode("gamma")


def deploy_and_compare(deployment, command: str, name: str, plays_jsonl: Path, own: dict,
                       local_own: dict | None = None,
                       adapter_files: tuple[str, ...] = ("adapter/adapter_model.safetensors",)) -> None:
    """One round of ``command`` with the algorithm's keys ``own``: across the parties, and on LocalBackend over
    every client's data (with ``local_own`` on top); the same rows and adapters, bit for bit."""
    settings = {"rounds": 1, "progress": False, "optimizer": {"lr": 0.01},
                "trainer": {"max_steps": 3, "accelerator": "cpu"}, **own}
    reference = run_locally(command, {**settings, **(local_own or {})}, deployment.root / f"{name}-local",
                            plays_jsonl)
    config = server_config(deployment.root, name, settings)
    assert deployment.deploy(config, "--command", command).wait(timeout=600) == 0, deployment.log("deploy")[-3000:]
    for adapter_file in adapter_files:
        assert_same_run(deployment.root / name, reference, adapter_file)


@contextlib.contextmanager
def parties_adding(deployment, keys_of) -> Iterator[None]:
    """Each party's config with ``keys_of(client_id)`` added, for the duration."""
    originals = {play: path.read_text() for play, path in deployment.parties.items()}
    try:
        for play, path in deployment.parties.items():
            path.write_text(yaml.safe_dump({**yaml.safe_load(originals[play]), **keys_of(play)}))
        yield
    finally:
        for play, path in deployment.parties.items():
            path.write_text(originals[play])


@pytest.mark.deployment_long
def test_fedhetero_across_parties_each_naming_its_own_teacher(deployment, tiny_model_dir, plays_jsonl):
    teacher = {"name_or_path": str(tiny_model_dir)}
    with parties_adding(deployment, lambda play: {"teachers": {play: teacher}}):  # the server names none
        deploy_and_compare(deployment, "fedhetero", "hetero", plays_jsonl,
                           {"teachers": {}, "mentee": {"name_or_path": str(tiny_model_dir), "keep_blocks": None}},
                           local_own={"teachers": {play: teacher for play in PLAYS}})


@pytest.mark.deployment_long
def test_fedost_across_parties_sends_the_emulator_not_the_full_model(deployment, tiny_model_dir, plays_jsonl):
    from test_fedost import deep_model
    from transformers import AutoTokenizer

    owner = deployment.root / "owner-model"  # six blocks; the emulator keeps four
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    deep_model("llama", len(tokenizer), tokenizer.eos_token_id).save_pretrained(owner)
    tokenizer.save_pretrained(owner)
    deploy_and_compare(deployment, "fedost", "ost", plays_jsonl,
                       {"model": {"name_or_path": str(owner)},
                        "offsite": {"front": 1, "back": 1, "emulator_ratio": 0.5}},
                       adapter_files=("plugged_in/model.safetensors",))
    assert "client package" in deployment.log("deploy")  # offered by digest, sent once


@pytest.mark.deployment_long
def test_fedco_across_parties_sends_the_distilled_slm_and_keeps_the_llm(deployment, tiny_model_dir, plays_jsonl):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    llm = deployment.root / "server-llm"  # a wider, deeper sibling of the tiny model: the server's own
    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.num_hidden_layers, config.hidden_size, config.intermediate_size = 4, 48, 96
    torch.manual_seed(5)
    LlamaForCausalLM(config).save_pretrained(llm)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(llm)
    public = {"steps": 2, "lr": 0.01, "source": str(plays_jsonl), "max_length": 32, "batch_size": 4}
    deploy_and_compare(deployment, "fedco", "co", plays_jsonl,
                       {"llm": {"name_or_path": str(llm)},
                        "slm": {"name_or_path": str(tiny_model_dir), "keep_blocks": None},
                        "slm_init": public, "server": public},
                       adapter_files=("adapter/adapter_model.safetensors", "llm_adapter/adapter_model.safetensors"))


@pytest.mark.deployment_long
@pytest.mark.parametrize(("changes", "status", "line"), [
    ({"faults": {"max_update_norm": 1e-12}}, 3, "fedlit: nothing was trained: "),
    ({"faults": {"min_clients": 4}}, 1,
     "fedlit: faults.min_clients is 4 but only 3 clients are sampled per round"),
], ids=["nothing-trained", "bad-input"])
def test_deploy_exits_as_fit_would_with_the_servers_one_line_reason(deployment, tiny_model_dir, changes, status,
                                                                     line):
    settings = {**fedhomo(tiny_model_dir), "rounds": 1, "secure_aggregation": None, **changes}
    name = f"exit-{status}"
    config = server_config(deployment.root, name, settings)
    (deployment.root / "deploy.log").unlink(missing_ok=True)
    assert deployment.deploy(config).wait(timeout=600) == status, deployment.log("deploy")[-3000:]
    assert deployment.log("deploy").strip().splitlines()[-1].startswith(line), deployment.log("deploy")[-3000:]

