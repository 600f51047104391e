"""FlowerBackend and the party's ClientApp in one process, over a grid that routes each message to a party's
handler: replies are matched to their requests, garbage, replays and silence become named client failures, an
offline SuperNode fails at once and a restarted one is found again; a party keeps its secure-aggregation state in
its own context."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("flwr")

from conftest import play_records  # noqa: E402
from flwr.app import Context, Message, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedlit.backends.messages import ClientFailure  # noqa: E402
from fedlit.cli import fit_parser  # noqa: E402
from fedlit.flower import client_app, party_client  # noqa: E402
from fedlit.flower.backend import FlowerBackend  # noqa: E402
from fedlit.flower.envelope import RECORD, read_reply, read_request, reply_content, request_content  # noqa: E402
from fedlit.flower.package import package_digest, package_files, store_package  # noqa: E402
from fedlit.models import ModelConfig, load_base_model, load_tokenizer  # noqa: E402
from fedlit.secure.config import SecureAggregationConfig  # noqa: E402
from fedlit.secure.messages import RoundSetup, decode, encode  # noqa: E402
from fedlit.secure.protocol import SecAggClient  # noqa: E402
from fedlit.server.emulator_construction import write_client_package  # noqa: E402


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    for key, value in {"_run_id": 1, "_node_id": 0, "_task_id": 1}.items():
        monkeypatch.setattr(TaskIdentity, key, value)


class Grid:
    """A grid whose nodes answer in-process: node id -> handler(message) -> reply or None (silence)."""

    def __init__(self, handlers):
        self.handlers, self.replies, self.ids = dict(handlers), {}, itertools.count()

    def get_node_ids(self):
        return list(self.handlers)

    def push_messages(self, messages):
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = f"m{next(self.ids)}"
            reply = self.handlers[message.metadata.dst_node_id](message)
            if reply is not None:
                self.replies[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in message_ids if i in self.replies]


def describing(client_id, train_size=10):
    """A party that answers ``describe`` and echoes anything else back as its reply."""

    def handler(message):
        request = read_request(message)
        value = {"client_id": client_id, "train_size": train_size, "val_size": 4} \
            if request.method == "describe" else request.payload
        return Message(reply_content(request, client_id, value), reply_to=message)

    return handler


def backend_for(handlers, **kwargs) -> FlowerBackend:
    backend = FlowerBackend(Grid(handlers), parties=len(handlers), wait_s=1, **kwargs)
    backend.federated_data(None, None)
    return backend


def test_discovery_maps_clients_to_nodes_and_reports_only_sizes():
    backend = FlowerBackend(Grid({7: describing("alpha", 12), 9: describing("beta", 5)}), parties=2, wait_s=1)
    data = backend.federated_data(None, None)
    assert backend.nodes == {"alpha": 7, "beta": 9}
    assert {cid: len(d.train_dataset) for cid, d in data.clients.items()} == {"alpha": 12, "beta": 5}
    assert data.global_val is None
    assert backend.call("evaluate", {"alpha": b"x", "beta": b"y"}) == {"alpha": b"x", "beta": b"y"}


def test_two_supernodes_naming_one_client_are_refused():
    with pytest.raises(ValueError, match="both name client 'alpha'"):
        backend_for({1: describing("alpha"), 2: describing("alpha")})


def test_too_few_supernodes_is_a_named_timeout():
    backend = FlowerBackend(Grid({1: describing("alpha")}), parties=3, wait_s=0.1)
    with pytest.raises(TimeoutError, match="1 of 3 SuperNodes"):
        backend.federated_data(None, None)


def test_garbage_a_replay_and_silence_are_failures_of_the_named_client():
    handlers = {1: describing("alpha"), 2: describing("beta"), 3: describing("gamma")}
    backend = backend_for(handlers, reply_timeout_s=0.5)
    earlier = {}

    def replaying(message):  # answers with its reply to the first request it saw
        earlier.setdefault("reply", describing("alpha")(message))
        reply = earlier["reply"]
        return Message(reply.content, reply_to=message)

    def garbage(message):
        request = read_request(message)
        content = reply_content(request, "beta", b"")
        content.config_records[RECORD]["payload"] = b"\xc1 not msgpack"
        return Message(content, reply_to=message)

    backend.grid.handlers.update({1: replaying, 2: garbage, 3: lambda message: None})
    backend.call("evaluate", {"alpha": b"a"})  # the reply alpha will replay
    replies = backend.call("evaluate", {"alpha": b"a", "beta": b"b", "gamma": b"c"})
    assert all(isinstance(reply, ClientFailure) for reply in replies.values()), replies
    assert "client 'alpha' sent a reply to another request" in replies["alpha"].reason
    assert "client 'beta' sent garbage" in replies["beta"].reason
    assert "no reply within 0.5 s" in replies["gamma"].reason


def test_an_offline_supernode_fails_at_once_and_a_restarted_one_is_found_again():
    grid_handlers = {1: describing("alpha"), 2: describing("beta")}
    backend = backend_for(grid_handlers)
    del backend.grid.handlers[2]  # beta's SuperNode went offline
    replies = backend.call("evaluate", {"alpha": b"a", "beta": b"b"})
    assert replies["alpha"] == b"a" and "SuperNode of client 'beta' is offline" in replies["beta"].reason
    backend.grid.handlers[5] = describing("beta")  # restarted: a new node id
    assert backend.call("evaluate", {"beta": b"b"}) == {"beta": b"b"}
    assert backend.nodes["beta"] == 5


def party_context(client_id: str | None, config: dict) -> Context:

    return Context(run_id=1, node_id=1, node_config={} if client_id is None else {"client-id": client_id},
                   state=RecordDict(), run_config={"fedlit-command": "fit", "fedlit-config": yaml.safe_dump(config)})


def ask(context: Context, method: str, payload, client_id: str = "alpha") -> object:
    """The party's reply to one request, as the backend reads it."""
    content, nonce = request_content(method, payload)
    message = Message(content, dst_node_id=1, message_type="query", group_id=method)
    message.metadata.__dict__["_message_id"] = "m"
    return read_reply(client_app.answer(message, context), client_id, nonce)


def test_the_party_keeps_its_secure_aggregation_state_in_its_own_context():
    names = ["alpha", "beta", "gamma"]
    setup = RoundSetup(1, names, {c: [o for o in names if o != c] for c in names}, 2, 5, 64, 2.0**24)
    context = party_context("alpha", {"secure_aggregation": {}})
    advert = decode(ask(context, "secagg_setup", encode(setup)))
    state = SecAggClient.from_bytes(context.state.config_records["fedlit-party-state"]["state"],
                                    SecureAggregationConfig())
    assert advert == state.advertise()  # the stored state is the one that answered: keys, seed commitment
    assert "not a secure-aggregation message" in ask(context, "secagg_share", b"\xc1").reason  # garbage in


def test_the_party_refuses_unknown_methods_and_a_supernode_without_client_id():
    assert "unknown request method '__init__'" in ask(party_context("alpha", {}), "__init__", b"").reason
    assert "has no client-id" in ask(party_context(None, {}), "secagg_setup", b"", client_id="?").reason


def alpha_party_config(command: str, directory, **keys) -> str:
    """The merged config a party holding the alpha play's records builds its client from (as the run's config
    dumps it), with its ``keys``."""
    data = directory / "alpha.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in play_records() if r["play"] == "alpha"))
    config = {"data": {"source": str(data), "num_clients": 1, "val_examples_per_client": 4, "global_val_examples": 2,
                       "max_length": 32},
              "trainer": {"max_steps": 1, "accelerator": "cpu"}, **keys}
    parser = fit_parser(command)
    return parser.dump(parser.parse_object(config), skip_none=False, skip_check=True)


def received(directory, cache):
    """The package written in ``directory``, as a party stores it on arrival."""
    files = package_files(directory)
    return store_package(files, package_digest(files), cache)


def test_fedhetero_each_party_names_its_own_teacher_and_the_server_none(tiny_model_dir, tmp_path):
    from fedlit.algorithms import fed_hetero_llm
    from fedlit.algorithms.fed_hetero_llm import DistillingClient
    from fedlit.federation import Federation

    backend = FlowerBackend(Grid({1: describing("alpha"), 2: describing("beta")}), parties=2, wait_s=1)
    server = fed_hetero_llm(teachers={}, mentee=ModelConfig(str(tiny_model_dir), keep_blocks=None),
                            federation=Federation(backend=backend, output_dir=str(tmp_path / "run"), loggers=[],
                                                  progress=False))
    assert sorted(server.clients) == ["alpha", "beta"]
    assert all(client.module_factory is None for client in server.clients.values())  # no teacher on the server

    text = alpha_party_config("fedhetero", tmp_path, teachers={"alpha": {"name_or_path": str(tiny_model_dir)}},
                              mentee={"name_or_path": str(tiny_model_dir), "keep_blocks": None})
    client = party_client.party_client("alpha", "fedhetero", text).client
    assert isinstance(client.module_factory, DistillingClient)
    assert client.module_factory.teacher.name_or_path == str(tiny_model_dir)
    assert yaml.safe_load(text)["teachers"]["alpha"]["name_or_path"] == str(tiny_model_dir)


def package_party(client_id: str, cache):
    """A node whose party answers ``describe`` and, through its real ClientApp, ``receive_package``; it records
    which offers carried the files."""
    context = party_context(client_id, {})
    context.node_config["cache-dir"] = str(cache)
    offers = []

    def handler(message):
        request = read_request(message)
        if request.method == "describe":
            return describing(client_id)(message)
        offers.append(request.payload)
        return client_app.answer(message, context)

    return handler, context, offers


def test_the_client_package_reaches_every_party_once_checked_by_digest(tmp_path):

    def build(directory):
        (directory / "sub").mkdir(parents=True)
        (directory / "model.safetensors").write_bytes(b"weights" * 100)
        (directory / "sub" / "tokenizer.json").write_text("{}")

    nodes = {cid: package_party(cid, tmp_path / f"cache-{cid}") for cid in ("alpha", "beta")}
    for attempt in range(2):  # a second run (a restart, say) finds the package already there
        backend = backend_for({i: nodes[cid][0] for i, cid in enumerate(nodes)})
        directory = backend.client_package(tmp_path / f"package-{attempt}", build)
        digest = package_digest(package_files(directory))
        for cid, (_, context, offers) in nodes.items():
            stored = tmp_path / f"cache-{cid}" / "packages" / digest
            assert package_files(stored) == package_files(directory)
            assert context.state.config_records["fedlit-package"]["digest"] == digest
            assert [offer["files"] is not None for offer in offers] == [False, True, False][: len(offers)]
    files = package_files(directory)
    with pytest.raises(ValueError, match="does not match its digest"):
        store_package({**files, "model.safetensors": b"tampered"}, digest, tmp_path / "other")
    evil = {"../escape": b"x"}
    with pytest.raises(ValueError, match="outside it"):
        store_package(evil, package_digest(evil), tmp_path / "other")


def base_parameters(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)


def test_a_fedost_party_trains_on_the_received_package_and_never_loads_the_full_model(tiny_model_dir, tmp_path):
    from fedlit.algorithms.fed_ost import client_package
    from fedlit.lightning_modules.knowledge_distillation import DistillationConfig
    from fedlit.models.offsite import OffsiteConfig

    model = ModelConfig(str(tiny_model_dir))
    client_package(load_base_model(model), load_tokenizer(model), OffsiteConfig(front=1, back=0, emulator_ratio=1.0),
                   DistillationConfig(steps=0), tmp_path / "package", seed=0)
    package = received(tmp_path / "package", tmp_path / "cache")
    text = alpha_party_config("fedost", tmp_path, offsite={"front": 1, "back": 0, "emulator_ratio": 1.0},
                              model={"name_or_path": str(tmp_path / "the-owners-model-is-not-here")})
    app = party_client.party_client("alpha", "fedost", text, package)
    assert base_parameters(app.module_factory().model) == base_parameters(load_base_model(ModelConfig(str(package))))
    with pytest.raises(ValueError, match="none has arrived"):
        party_client.party_client("alpha", "fedost", text, None)


def test_a_fedco_party_trains_the_received_slm_and_never_loads_the_llm(tiny_model_dir, tmp_path):
    slm = ModelConfig(str(tiny_model_dir))
    write_client_package(load_base_model(slm), load_tokenizer(slm), tmp_path / "package")  # the server's SLM
    package = received(tmp_path / "package", tmp_path / "cache")
    text = alpha_party_config("fedco", tmp_path, llm={"name_or_path": str(tmp_path / "the-servers-llm-is-not-here")},
                              slm={"name_or_path": str(tmp_path / "nor-its-slm"), "keep_blocks": None})
    app = party_client.party_client("alpha", "fedco", text, package)  # the received SLM under a fresh LoRA adapter
    assert base_parameters(app.module_factory().model) == base_parameters(load_base_model(ModelConfig(str(package))))


PEFT_METHODS = {
    "ia3": {"class_path": "peft.IA3Config", "init_args": {"target_modules": ["k_proj", "v_proj", "down_proj"],
                                                          "feedforward_modules": ["down_proj"],
                                                          "task_type": "CAUSAL_LM"}},
    "prompt_tuning": {"class_path": "peft.PromptTuningConfig",
                      "init_args": {"num_virtual_tokens": 4, "task_type": "CAUSAL_LM"}},
    "p_tuning": {"class_path": "peft.PromptEncoderConfig",
                 "init_args": {"num_virtual_tokens": 4, "encoder_hidden_size": 16, "task_type": "CAUSAL_LM"}},
    "prefix_tuning": {"class_path": "peft.PrefixTuningConfig",
                      "init_args": {"num_virtual_tokens": 4, "task_type": "CAUSAL_LM"}},
}


def across_party_apps(settings: dict, model_dir: Path, source: Path, tmp_path: Path,
                      command: str = "fit") -> tuple[dict, dict]:
    """``settings`` run twice, from the same initial adapter: the server's loop over a FlowerBackend whose grid hands
    each message to the real party ClientApp of a party holding only its own records of ``source`` (one play each;
    its state directory ``tmp_path/state/<client>``), all in one process; and on LocalBackend over every record. Both
    final adapters."""
    from fedlit.cli import compose

    records = [json.loads(line) for line in source.read_text().splitlines()]
    common = {"progress": False, "loggers": [], "model": {"name_or_path": str(model_dir)}, "optimizer": {"lr": 0.05},
              "trainer": {"max_steps": 2, "accelerator": "cpu"}, **settings}
    data = {"val_examples_per_client": 4, "batch_size": 4, "max_length": 32}
    parser = fit_parser(command)
    server = parser.parse_object({**common, "output_dir": str(tmp_path / "flower"), "data": data})
    text = parser.dump(server, skip_none=False, skip_check=True)
    handlers = {}
    for node, play in enumerate(("alpha", "beta", "gamma"), start=1):
        own = tmp_path / f"{play}.jsonl"
        own.write_text("".join(json.dumps(r) + "\n" for r in records if r["play"] == play))
        party_file = tmp_path / f"{play}.yaml"
        own_data = {"source": str(own), "num_clients": 1, "global_val_examples": 2}
        party_file.write_text(yaml.safe_dump({"data": own_data}))
        context = Context(run_id=1, node_id=node, state=RecordDict(),
                          node_config={"client-id": play, "party-config": str(party_file),
                                       "state-dir": str(tmp_path / "state" / play)},
                          run_config={"fedlit-command": command, "fedlit-config": text})
        handlers[node] = lambda message, context=context: client_app.answer(message, context)
    flower = compose(command, server, parser, backend=FlowerBackend(Grid(handlers), parties=3, wait_s=1)).fit()
    local = compose(command, parser.parse_object({
        **common, "output_dir": str(tmp_path / "local"),
        "data": {**data, "source": str(source), "num_clients": 3, "global_val_examples": 6}}), parser).fit()
    return flower, local


def test_clients_of_different_lora_ranks_run_through_the_party_apps_as_in_a_local_run(tiny_model_dir, plays_jsonl,
                                                                                      tmp_path):
    """Each party's rank reaches its client mod in the fit instructions; two rounds equal the local run."""
    strategy = {"class_path": "fedlit.strategies.HeteroRank",
                "init_args": {"ranks": {"alpha": 2, "beta": 4}, "default_rank": 8}}
    flower, local = across_party_apps({"rounds": 2, "strategy": strategy}, tiny_model_dir, plays_jsonl, tmp_path)
    assert all(torch.equal(flower[name], local[name]) for name in local)


def test_federated_dpo_runs_through_the_party_apps_as_in_a_local_run(tiny_model_dir, preferences_jsonl, tmp_path):
    """Each party's preference pairs stay with it; two rounds equal the local run."""
    flower, local = across_party_apps({"rounds": 2, "dpo": {"beta": 0.5}}, tiny_model_dir, preferences_jsonl,
                                      tmp_path, command="fedpo")
    assert flower.keys() == local.keys()
    assert all(torch.equal(flower[name], local[name]) for name in local)
    assert any(local[name].abs().max() > 0 for name in local if "lora_B" in name)  # (it trained)


@pytest.mark.parametrize("method", sorted(PEFT_METHODS))
def test_every_peft_method_runs_through_the_party_apps_as_in_a_local_run(method, tiny_model_dir, plays_jsonl,
                                                                        tmp_path):
    """The whole server <-> party path in one process, one round of each peft method."""
    flower, local = across_party_apps({"rounds": 1, "peft": PEFT_METHODS[method]}, tiny_model_dir, plays_jsonl,
                                      tmp_path)
    assert flower.keys() == local.keys()
    assert all(torch.equal(flower[name], local[name]) for name in local)


def test_scaffold_through_the_party_apps_keeps_each_variate_with_its_party(tiny_model_dir, plays_jsonl, tmp_path):
    """SCAFFOLD's variate changes cross as plain data in the reply (FitRes.mods), each party's own variate stays
    in its state directory, and two rounds equal the local run."""
    scaffold = {"class_path": "fedlit.strategies.Scaffold",
                "init_args": {"strategy": {"class_path": "fedlit.strategies.FedAvg"}}}
    flower, local = across_party_apps({"rounds": 2, "strategy": scaffold},  # (the default adapter: LoRA)
                                      tiny_model_dir, plays_jsonl, tmp_path)
    assert all(torch.equal(flower[name], local[name]) for name in local)
    for play in ("alpha", "beta", "gamma"):
        kept = sorted(path.name for path in (tmp_path / "state" / play).rglob("scaffold_control-*.safetensors"))
        assert kept == ["scaffold_control-0001.safetensors", "scaffold_control-0002.safetensors"], (play, kept)


def test_a_failed_deployment_reports_fit_s_exit_status_and_line():
    """The ServerApp's ``[fedlit exit N] line`` becomes ``fedlit deploy``'s status and line, as ``fedlit fit``'s
    for the same error; anything else a failed run says is status 1 with Flower's words."""
    import signal

    from fedlit.cli.errors import failure
    from fedlit.flower.deploy import run_failure
    from fedlit.flower.server_app import FAILED
    from fedlit.server.interrupts import NothingTrained, RunInterrupted

    for error, status, line in [(NothingTrained("every round skipped"), 3, "nothing was trained: every round skipped"),
                                (RunInterrupted(signal.SIGTERM, 2, Path("ckpt")), 143, "interrupted by SIGTERM"),
                                (ValueError("faults.min_clients is 4"), 1, "faults.min_clients is 4")]:
        assert failure(error)[0] == status
        details = f"finished:failed: ServerApp failed with exception: {FAILED} {status}] {failure(error)[1]}"
        assert run_failure(details)[0] == status and run_failure(details)[1].startswith(line)
    assert run_failure("finished:failed: the ServerApp died") == (1, "the run failed: finished:failed: the ServerApp "
                                                                    "died")
