"""Deployment on Flower: a real SuperLink and three SuperNodes as separate OS processes on localhost, each party
with its own data file, over TLS with SuperNode authentication, each message answered in the process Flower starts
for it (no model host): one round matches LocalBackend's, a SuperNode with an unregistered key is refused, and
private inference runs across the parties (query and extraction in separate processes). The long suite, on parties
with model hosts, is tests/test_flower_model_host.py; tests marked ``deployment_long`` take minutes each and
``make test`` leaves them to ``make test-deployment``."""

from __future__ import annotations

import contextlib
import csv
import json
import secrets
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


def test_a_supernode_with_an_unregistered_key_is_refused(deployment):
    rogue = deployment.start_supernode("gamma", key="rogue")
    assert rogue.wait(timeout=120) != 0
    assert "Failed to activate SuperNode" in deployment.log("rogue")


def deploy_and_compare(deployment, command: str, name: str, plays_jsonl: Path, own: dict,
                       local_own: dict | None = None,
                       adapter_files: tuple[str, ...] = ("adapter/adapter_model.safetensors",)) -> None:
    """One round of ``command`` with the algorithm's keys ``own`` (a key set to None drops a default): across the
    parties, and on LocalBackend over every client's data (with ``local_own`` on top); the same rows and adapters,
    bit for bit."""
    defaults = {"rounds": 1, "progress": False, "optimizer": {"lr": 0.01}, "trainer": {"max_steps": 3,
                                                                                      "accelerator": "cpu"}}
    settings = {key: value for key, value in {**defaults, **own}.items() if value is not None}
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
def test_private_inference_across_parties_the_server_receives_only_perturbed_prompts(deployment, tiny_model_dir):
    """``fedlit deploy --command infer``: the server's model in the ServerApp, each party's prompts in a file named
    only by its own party-config; what the ServerApp received (its received.jsonl, written from the replies as they
    arrived) holds no clear prompt and is exactly what each party's audit says it sent."""
    words = secrets.token_hex(4)  # fresh text: no clear prompt is in this module or the server's config
    prompts = {play: [f"the king {words} of {play} is dead", f"what light {words} breaks in {play}"] for play in PLAYS}
    for play, texts in prompts.items():
        (deployment.root / f"{play}-prompts.json").write_text(json.dumps(texts))
    settings = {"server": {"model": str(tiny_model_dir)}, "local": {"model": str(tiny_model_dir)}, "epsilon": 1.0,
                "candidates": 8, "max_new_tokens": 5, "answer_max_new_tokens": 4,
                "output_dir": str(deployment.root / "infer")}
    config = deployment.root / "infer.yaml"
    config.write_text(yaml.safe_dump(settings))
    own = {play: {"prompts": str(deployment.root / f"{play}-prompts.json"),
                  "output": str(deployment.root / f"{play}-answers.jsonl"),
                  "table_dir": str(deployment.root / f"{play}-tables")} for play in PLAYS}
    with parties_adding(deployment, own.get):
        assert deployment.deploy(config, "--command", "infer").wait(timeout=600) == 0, deployment.log("deploy")[-3000:]
    received = [json.loads(line) for line in (deployment.root / "infer" / "received.jsonl").read_text().splitlines()]
    assert sorted(r["client"] for r in received) == sorted(PLAYS)
    server_side = (deployment.root / "infer" / "received.jsonl").read_text() + deployment.log("deploy")
    assert not any(p in server_side for texts in prompts.values() for p in texts)
    for row in received:
        audit = [json.loads(line) for line in Path(own[row["client"]]["output"]).read_text().splitlines()]
        assert [r["prompt"] for r in audit] == prompts[row["client"]]  # the party answered its own prompts
        assert [r["sent"] for r in audit] == row["prompts"]  # and the server got what the audit says left
        assert all(r["sent"] != r["prompt"] and r["answer"] for r in audit)
    record = json.loads((deployment.root / "infer" / "deployment.json").read_text())
    assert record["client_secrets_in_server_process"] == 0  # no perturbation secret came into being there
