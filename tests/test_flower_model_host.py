"""The long deployment suite, on parties with model hosts (the recommended deployment): with ``model-host`` in its
node config, a party's fits and evaluations run in a long-lived actor on its own Ray instance instead of in the
process Flower starts for each message, so its base model loads once per run. Three SuperNodes over TLS with node
authentication: every algorithm bit-identical to LocalBackend (FedHomoLLM with secure aggregation, DP, FedHeteroLLM,
FedOST, FedCoLLM, FedKSeed, FedMKT), a server restart, a SuperNode killed mid-round, the CLI's exit statuses. (The
same parties without a model host: tests/test_flower.py.)"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("flwr")
pytest.importorskip("ray")

from conftest import PLAYS  # noqa: E402
from deployment import LocalDeployment  # noqa: E402
from test_flower import (  # noqa: E402
    assert_same_run,
    deploy_and_compare,
    fedhomo,
    parties_adding,
    party_files,
    rows,
    run_locally,
    server_config,
    wait_for,
)

pytestmark = [pytest.mark.deployment, pytest.mark.deployment_long]


@pytest.fixture(scope="module")
def hosted(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("hosted")
    deployment = LocalDeployment(root, party_files(root))
    deployment.start_ray_head()
    yield deployment.start()
    deployment.stop()


@pytest.fixture(scope="module")
def local_reference(tiny_model_dir: Path, plays_jsonl: Path, hosted: LocalDeployment) -> Path:
    """The same run on LocalBackend."""
    return run_locally("fit", fedhomo(tiny_model_dir), hosted.root / "local", plays_jsonl)



def test_dp_noise_shares_are_drawn_by_the_parties_and_never_exist_in_the_server(hosted, tiny_model_dir,
                                                                                plays_jsonl):
    """Client-level DP with noise shares under masking: each party draws its share from its own secret (pinned
    here by insecure_seed on both sides, so the deployed run can be compared with a local one), and no client
    secret comes into being in the ServerApp's process during the run."""
    settings = {**fedhomo(tiny_model_dir), "rounds": 1, "insecure_seed": 3,
                "privacy": {"noise_multiplier": 0.5, "clip_norm": 0.5}, "faults": {"min_clients": 3}}
    config = server_config(hosted.root, "dp", settings)
    assert hosted.deploy(config).wait(timeout=600) == 0, hosted.log("deploy")[-3000:]
    assert_same_run(hosted.root / "dp", run_locally("fit", settings, hosted.root / "local-dp", plays_jsonl))
    record = json.loads((hosted.root / "dp" / "deployment.json").read_text())
    assert record["client_secrets_in_server_process"] == 0


def test_client_level_dp_and_dp_sgd_across_processes_equal_local_backend_epsilon_rows_included(
        hosted, tiny_model_dir, plays_jsonl):
    """Client-level DP in the clear (the server adds the noise) with DP-SGD in every party, two rounds, so that
    each party's DP-SGD epsilon counts the steps of both (it keeps its count in its own state directory, as it
    would across the processes Flower starts per message without a model host); noise pinned by insecure_seed on
    both sides. (Client-level DP with noise shares under secure aggregation: the test above.)"""
    settings = {**fedhomo(tiny_model_dir), "secure_aggregation": None, "insecure_seed": 5,
                "privacy": {"noise_multiplier": 0.5, "clip_norm": 0.5},
                "example_privacy": {"noise_multiplier": 0.5, "max_grad_norm": 1.0, "delta": 1e-3}}
    config = server_config(hosted.root, "dp-both", settings)
    assert hosted.deploy(config).wait(timeout=900) == 0, hosted.log("deploy")[-3000:]
    local = run_locally("fit", settings, hosted.root / "local-dp-both", plays_jsonl)
    assert_same_run(hosted.root / "dp-both", local)
    with_epsilon = [(r["client"], r["split"]) for r in rows(local) if r["epsilon"]]
    assert with_epsilon.count(("server", "privacy")) == 2 and len(with_epsilon) == 2 + 2 * len(PLAYS)


def test_server_restart_with_resume_finishes_like_an_uninterrupted_run(hosted, local_reference, tiny_model_dir):
    config = server_config(hosted.root, "restarted", fedhomo(tiny_model_dir))
    hosted.deploy(config)
    checkpoint = hosted.root / "restarted" / "checkpoints" / "round-0001.ckpt"
    wait_for(checkpoint.exists, 600, "no round-1 checkpoint")
    hosted.kill("superlink")  # the server process (SuperLink with its ServerApp) dies mid-run
    hosted.kill("deploy")
    hosted.start_superlink()  # the SuperNodes reconnect by themselves
    assert hosted.deploy(config, "--resume", "true").wait(timeout=600) == 0, hosted.log("deploy")[-3000:]
    assert_same_run(hosted.root / "restarted", local_reference)


def test_a_supernode_killed_mid_round_is_a_dropout(hosted, tiny_model_dir):
    config = server_config(hosted.root, "dropout",
                           {**fedhomo(tiny_model_dir), "rounds": 1, "faults": {"timeout_s": 30}})
    run = hosted.deploy(config, "--reply_timeout_s", "30")
    metrics = hosted.root / "dropout" / "metrics.csv"
    wait_for(metrics.exists, 600, "round 0 never finished")  # round 0 evaluated: round 1 is starting
    hosted.kill("gamma", signal.SIGKILL)
    assert run.wait(timeout=600) == 0, hosted.log("deploy")[-3000:]
    trained = {row["client"]: row for row in rows(hosted.root / "dropout")
               if row["round"] == "1" and row["split"] == "train"}
    assert trained["gamma"]["excluded"], trained
    assert not trained["alpha"]["excluded"] and not trained["beta"]["excluded"]
    hosted.start_supernode("gamma")


def test_fedhetero_across_parties_each_naming_its_own_teacher(hosted, tiny_model_dir, plays_jsonl):
    teacher = {"name_or_path": str(tiny_model_dir)}
    with parties_adding(hosted, lambda play: {"teachers": {play: teacher}}):  # the server names none
        deploy_and_compare(hosted, "fedhetero", "hetero", plays_jsonl,
                           {"teachers": {}, "mentee": {"name_or_path": str(tiny_model_dir), "keep_blocks": None}},
                           local_own={"teachers": {play: teacher for play in PLAYS}})


def test_fedost_across_parties_sends_the_emulator_not_the_full_model(hosted, tiny_model_dir, plays_jsonl):
    from test_fedost import deep_model
    from transformers import AutoTokenizer

    owner = hosted.root / "owner-model"  # six blocks; the emulator keeps four
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    deep_model("llama", len(tokenizer), tokenizer.eos_token_id).save_pretrained(owner)
    tokenizer.save_pretrained(owner)
    deploy_and_compare(hosted, "fedost", "ost", plays_jsonl,
                       {"model": {"name_or_path": str(owner)},
                        "offsite": {"front": 1, "back": 1, "emulator_ratio": 0.5}},
                       adapter_files=("plugged_in/model.safetensors",))
    assert "client package" in hosted.log("deploy")  # offered by digest, sent once


def test_fedco_across_parties_sends_the_distilled_slm_and_keeps_the_llm(hosted, tiny_model_dir, plays_jsonl):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    llm = hosted.root / "server-llm"  # a wider, deeper sibling of the tiny model: the server's own
    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.num_hidden_layers, config.hidden_size, config.intermediate_size = 4, 48, 96
    torch.manual_seed(5)
    LlamaForCausalLM(config).save_pretrained(llm)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(llm)
    public = {"steps": 2, "lr": 0.01, "source": str(plays_jsonl), "max_length": 32, "batch_size": 4}
    deploy_and_compare(hosted, "fedco", "co", plays_jsonl,
                       {"llm": {"name_or_path": str(llm)},
                        "slm": {"name_or_path": str(tiny_model_dir), "keep_blocks": None},
                        "slm_init": public, "server": public},
                       adapter_files=("adapter/adapter_model.safetensors", "llm_adapter/adapter_model.safetensors"))


@pytest.mark.parametrize(("changes", "status", "line"), [
    ({"faults": {"max_update_norm": 1e-12}}, 3, "fedlit: nothing was trained: "),
    ({"faults": {"min_clients": 4}}, 1,
     "fedlit: faults.min_clients is 4 but only 3 clients are sampled per round"),
], ids=["nothing-trained", "bad-input"])
def test_deploy_exits_as_fit_would_with_the_servers_one_line_reason(hosted, tiny_model_dir, changes, status,
                                                                     line):
    settings = {**fedhomo(tiny_model_dir), "rounds": 1, "secure_aggregation": None, **changes}
    name = f"exit-{status}"
    config = server_config(hosted.root, name, settings)
    (hosted.root / "deploy.log").unlink(missing_ok=True)
    assert hosted.deploy(config).wait(timeout=600) == status, hosted.log("deploy")[-3000:]
    assert hosted.log("deploy").strip().splitlines()[-1].startswith(line), hosted.log("deploy")[-3000:]


def test_each_party_loads_its_model_once_per_run_and_the_run_matches_local_backend(hosted, local_reference,
                                                                                     tiny_model_dir):
    settings = fedhomo(tiny_model_dir)  # secure aggregation, 2 rounds: every party fits and evaluates 3 times
    config = server_config(hosted.root, "hosted", settings)
    logs = {play: hosted.root / "state" / play / "model-loads.log" for play in PLAYS}
    before = {play: len(log.read_text().splitlines()) if log.exists() else 0 for play, log in logs.items()}
    assert hosted.deploy(config).wait(timeout=900) == 0, hosted.log("deploy")[-3000:]
    assert_same_run(hosted.root / "hosted", local_reference)
    for play, log in logs.items():
        builds = log.read_text().splitlines()[before[play]:]  # (earlier runs on these parties logged theirs)
        assert len(builds) == 1, builds
    record = json.loads((hosted.root / "hosted" / "deployment.json").read_text())
    assert sorted(record["parties"]) == sorted(PLAYS)
    assert record["client_secrets_in_server_process"] == 0  # every copy counted as it is made, the whole run


def test_fedkseed_across_hosted_parties_with_secure_aggregation_matches_local_backend(hosted, tiny_model_dir,
                                                                                       plays_jsonl):
    deploy_and_compare(hosted, "fedkseed", "kseed", plays_jsonl,
                       {"model": {"name_or_path": str(tiny_model_dir)}, "secure_aggregation": {},
                        "peft": fedhomo(tiny_model_dir)["peft"], "zeroth_order": {"seeds": 64, "lr": 0.01},
                        "optimizer": None},  # (zeroth-order steps: no optimizer)
                       adapter_files=("adapter/fedkseed_coefficients.safetensors",))


def test_fedmkt_across_hosted_parties_gets_the_llms_tokenizer_and_public_texts_by_package(
        hosted, tiny_model_dir, other_tokenizer_model_dir, plays_jsonl):
    """Heterogeneous FedMKT: gamma's SLM has another tokenizer; each party gets the LLM's tokenizer and the public
    texts (chosen to fit every tokenizer, which no party could do alone) in the client package, and never the LLM."""
    deploy_and_compare(hosted, "fedmkt", "mkt", plays_jsonl,
                       {"llm": {"name_or_path": str(tiny_model_dir)},
                        "slm": {"name_or_path": str(tiny_model_dir), "keep_blocks": None},
                        "slms": {"gamma": {"name_or_path": str(other_tokenizer_model_dir), "keep_blocks": None}},
                        "peft": fedhomo(tiny_model_dir)["peft"],
                        "transfer": {"source": str(plays_jsonl), "template": "{text}", "max_length": 24,
                                     "examples": 8, "top_k": 4, "server_steps": 2, "server_lr": 0.01}},
                       adapter_files=("llm_adapter/adapter_model.safetensors", "adapter/knowledge.safetensors"))
    package = hosted.root / "mkt" / "client_package"
    assert (package / "public_texts.json").is_file() and not (package / "model.safetensors").exists()
    assert "client package" in hosted.log("deploy")


def crash_and_ask_again(address: str, config_text: str, state_dir: str) -> dict:
    """In a fresh process (as Flower's per-message ClientApp process is, Ray's token authentication on before Ray
    loads): the party's ClientApp asked to ``describe`` while its host is killed mid-build, then asked again."""
    import threading

    import ray
    from flwr.app import Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity
    from test_flower_backend import ask

    for key, value in {"_run_id": 1, "_node_id": 0, "_task_id": 1}.items():  # (what Flower's process sets)
        setattr(TaskIdentity, key, value)
    ray.init(address=address, namespace="crash-test", log_to_driver=False)  # (a namespace of its own)
    context = Context(run_id=1, node_id=1, state=RecordDict(),
                      node_config={"client-id": "alpha", "model-host": address, "state-dir": state_dir,
                                   "model-host-threads": 1},
                      run_config={"fedlit-command": "fit", "fedlit-config": config_text})

    def is_failure(reply: object) -> bool:
        return hasattr(reply, "reason")

    builds = 0
    for delay in (1.0, 0.5, 2.0, 0.25, 3.0, 0.1):  # (the kill must land mid-build: on a fast machine a fixed delay
        replies: list[object] = []              # can miss it; a build that finished is killed after it instead)
        first = threading.Thread(target=lambda into=replies: into.append(ask(context, "describe", b"")))
        first.start()
        wait_for(lambda: any(a["name"] == "party-alpha" for a in ray.util.list_named_actors(all_namespaces=True)
                             if a["namespace"] == "crash-test"), 60, "the host never started")
        time.sleep(delay)  # (it is building the client: imports, the base model, the data)
        ray.kill(ray.get_actor("party-alpha"), no_restart=False)
        first.join(timeout=120)
        (crashed,) = replies
        builds += not is_failure(crashed)
        if is_failure(crashed):
            break
    described = ask(context, "describe", b"")  # the restarted host builds the client again
    ray.shutdown()
    return {"crashed": vars(crashed) if is_failure(crashed) else repr(crashed), "described": described,
            "builds_before": builds}


def test_a_crashed_model_host_is_that_partys_failure_and_the_next_message_builds_it_again(
        hosted, tiny_model_dir, plays_jsonl, tmp_path):
    """The host killed while it builds the client: that message is answered as the party's failure, named (the
    server excludes the party for it); Ray restarts the host and the next message is answered, the client built
    again (its line in ``model-loads.log``, from another process than any build before)."""
    import subprocess
    import sys

    config = {"model": {"name_or_path": str(tiny_model_dir)}, "peft": fedhomo(tiny_model_dir)["peft"],
              "data": {"source": str(plays_jsonl), "clients": ["alpha"], "num_clients": 1,
                       "global_val_examples": 2, "val_examples_per_client": 2, "batch_size": 2}}
    script = ("import json, sys; sys.path.insert(0, sys.argv[1]); from test_flower_model_host import "
              "crash_and_ask_again; print(json.dumps(crash_and_ask_again(*sys.argv[2:]), default=str))")
    done = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent), hosted.model_host,
                           yaml.safe_dump(config), str(tmp_path / "state")], capture_output=True, text=True,
                          timeout=600, env={**hosted.env, "RAY_AUTH_MODE": "token"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    crashed, described = result["crashed"], result["described"]
    assert isinstance(crashed, dict) and crashed["raised"] and "actor" in crashed["reason"].lower(), crashed
    assert isinstance(described, dict) and described["client_id"] == "alpha" and described["train_size"] > 0, result
    builds = (tmp_path / "state" / "model-loads.log").read_text().splitlines()
    most = result["builds_before"] + 2  # (the crashed build may have written its line before the kill)
    assert 1 <= len(builds) <= most and len({line.rsplit(" ", 1)[1] for line in builds}) == len(builds), builds
