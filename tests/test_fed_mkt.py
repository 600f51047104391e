"""FedMKT: a server LLM and client SLMs with different tokenizers teach each other through top-k logits on public
texts; knowledge is kept per client, checked before it travels, and a resumed run ends bit-identical."""

from __future__ import annotations

import csv
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from conftest import with_federation
from peft import LoraConfig
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedlit.algorithms.fed_mkt import fed_mkt
from fedlit.data import DataConfig
from fedlit.lightning_modules import DistillationLossConfig, OptimizerConfig, build_peft_model
from fedlit.lightning_modules.causal_lm import CausalLMModule
from fedlit.lightning_modules.knowledge_transfer import KnowledgeTransferConfig, KnowledgeTransferModule
from fedlit.lightning_modules.public_knowledge import KnowledgeBridge, PublicTexts, knowledge_of
from fedlit.models import ModelConfig
from fedlit.payload import Update, canonical
from fedlit.secure import SecureAggregationConfig
from fedlit.strategies import FedAvg, KnowledgeGathering

TEXTS = ["Fair is foul and foul is fair.", "Out, damned spot! out, I say!", "Now is the winter of our discontent."]


def transfer(plays_jsonl, **overrides) -> KnowledgeTransferConfig:
    settings = dict(source=str(plays_jsonl), exclude={"play": ["alpha"]}, template="{text}", max_length=24,
                    batch_size=4, examples=12, top_k=4, server_steps=2, server_lr=1e-2, public_batch_size=4)
    return KnowledgeTransferConfig(**{**settings, **overrides})


def build(tiny_model_dir, other_dir, plays_jsonl, output_dir, **overrides):
    kwargs = dict(
        llm=ModelConfig(str(tiny_model_dir)), slm=ModelConfig(str(tiny_model_dir)),
        slms={"gamma": ModelConfig(str(other_dir))}, transfer=transfer(plays_jsonl),
        loss=DistillationLossConfig(kd_weight=0.5, temperature=2.0),
        data=DataConfig(source=str(plays_jsonl), num_clients=3, val_examples_per_client=4, global_val_examples=6,
                        batch_size=4, max_length=32),
        peft=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        optimizer=OptimizerConfig(lr=1e-2), rounds=2, output_dir=output_dir, loggers=[], progress=False,
        trainer_kwargs={"max_steps": 2, "accelerator": "cpu"},
    )
    return fed_mkt(**with_federation({**kwargs, **overrides}))


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def own_states(output_dir) -> dict[str, dict[str, torch.Tensor]]:
    """Each client's newest own adapter, by the name of its state directory."""
    found = {}
    for directory in sorted((output_dir / "client_state" / "personal").iterdir()):
        newest = sorted(directory.glob("state-*.safetensors"))[-1]
        found[directory.name] = load_file(newest)
    return found


def test_heterogeneous_run_trains_the_llm_and_every_clients_own_slm(tiny_model_dir, other_tokenizer_model_dir,
                                                                    plays_jsonl, tmp_path):
    loop = build(tiny_model_dir, other_tokenizer_model_dir, plays_jsonl, tmp_path / "run")
    llm_before = loop.strategy.llm.trainable_state_dict()
    initial = {cid: client.module_factory().initial_adapter for cid, client in loop.clients.items()}
    loop.fit()
    llm_after = loop.strategy.llm.trainable_state_dict()
    assert any(not torch.equal(llm_before[n], llm_after[n]) for n in llm_before)
    history = rows(tmp_path / "run" / "metrics.csv")
    assert {(r["round"], r["model"]) for r in history if r["client"] == "server"} == {("1", "llm"), ("2", "llm")}
    assert {r["round"] for r in history if r["model"] == "llm" and r["split"] == "val"} == {"0", "1", "2"}
    # only knowledge travels: at most 12 texts x 24 positions x top-4 (int32 id + float32 value) + 12 cross-entropies
    # (padding rows equal the global knowledge's zeros, so a tensor may travel as its changed entries)
    sent = {int(r["bytes_sent"]) for r in history if r["split"] == "train" and r["client"] != "server"}
    assert all(12 * 8 * 4 * 8 < size < 12 * 24 * 4 * 8 + 12 * 4 + 400 for size in sent)
    states = own_states(tmp_path / "run")
    assert len(states) == 3
    for cid in loop.clients:  # every client's own adapter moved, the other tokenizer's too
        (state,) = [s for name, s in states.items() if name.startswith(cid)]
        assert set(state) == set(initial[cid]) and any(not torch.equal(state[n], initial[cid][n]) for n in state)
    # the knowledge the run ends with is the final LLM's, recomputed here
    saved = load_file(tmp_path / "run" / "adapter" / "knowledge.safetensors")
    llm = loop.strategy.llm.eval()
    again = knowledge_of(llm, loop.strategy.public, 4, 4)
    assert torch.equal(saved["knowledge.ids"], again.ids) and torch.allclose(saved["knowledge.values"], again.values)
    assert (tmp_path / "run" / "llm_adapter" / "adapter_model.safetensors").is_file()


def test_resume_is_bit_identical_for_the_llm_and_the_clients(tiny_model_dir, other_tokenizer_model_dir, plays_jsonl,
                                                             tmp_path):
    whole = build(tiny_model_dir, other_tokenizer_model_dir, plays_jsonl, tmp_path / "whole")
    whole_final = whole.fit()
    first = build(tiny_model_dir, other_tokenizer_model_dir, plays_jsonl, tmp_path / "split", rounds=1)
    first.fit()
    resumed = build(tiny_model_dir, other_tokenizer_model_dir, plays_jsonl, tmp_path / "split")
    resumed_final = resumed.fit(resume=True)
    assert all(torch.equal(resumed_final[n], whole_final[n]) for n in whole_final)
    whole_llm, resumed_llm = (loop.strategy.llm.trainable_state_dict() for loop in (whole, resumed))
    assert all(torch.equal(resumed_llm[n], whole_llm[n]) for n in whole_llm)
    for (name, state), (other, again) in zip(own_states(tmp_path / "whole").items(),
                                             own_states(tmp_path / "split").items(), strict=True):
        assert name == other and all(torch.equal(state[n], again[n]) for n in state)


def test_nan_knowledge_excludes_that_client_under_the_fault_policy(tiny_model_dir, other_tokenizer_model_dir,
                                                                   plays_jsonl, tmp_path, monkeypatch):
    from fedlit.lightning_modules import knowledge_transfer

    other = AutoTokenizer.from_pretrained(other_tokenizer_model_dir).get_vocab()

    def poisoned(module, public, k, batch_size):  # the other tokenizer's client sends a NaN
        knowledge = knowledge_of(module, public, k, batch_size)
        if isinstance(module, KnowledgeTransferModule) and module.tokenizer.get_vocab() == other:
            knowledge.values[0, 1, 0] = float("nan")
        return knowledge

    monkeypatch.setattr(knowledge_transfer, "knowledge_of", poisoned)
    loop = build(tiny_model_dir, other_tokenizer_model_dir, plays_jsonl, tmp_path / "run", rounds=1)
    loop.fit()
    train = {r["client"]: r for r in rows(tmp_path / "run" / "metrics.csv") if r["split"] == "train"}
    assert "1 of 1152 top-k logits are NaN or infinite" in train["gamma"]["excluded"]
    assert not train["alpha"]["excluded"] and train["server"]["model"] == "llm"


def test_with_one_tokenizer_a_client_step_is_ce_plus_plain_top_k_distillation(tiny_model_dir, plays_jsonl):
    """The same tokenizer on both sides: the DP alignment and vocabulary map change nothing, and a client step's loss
    is (1 - w) * CE on its batch + w * KL over the teacher's top-k, computed here from the teacher's own logits."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    public = PublicTexts.encode(TEXTS, tokenizer, 24)
    torch.manual_seed(3)
    teacher = CausalLMModule(AutoModelForCausalLM.from_pretrained(tiny_model_dir)).eval()
    knowledge = knowledge_of(teacher, public, 5, 2)
    bridge = KnowledgeBridge(public, public, tokenizer, tokenizer)
    bridge.identity = False  # through the alignment path anyway
    carried = bridge.carry(knowledge)
    assert torch.equal(carried.ids, knowledge.ids) and torch.equal(carried.values, knowledge.values)

    student = build_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                               LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), seed=1)
    config = KnowledgeTransferConfig(max_length=24, top_k=5, public_batch_size=2)
    loss = DistillationLossConfig(kd_weight=0.3, temperature=2.0)
    initial = canonical({n: p for n, p in student.named_parameters() if p.requires_grad})
    module = KnowledgeTransferModule(student, public, bridge, config, loss, False, initial)
    knowledge.ce = torch.tensor([0.0, 100.0, 0.0])  # the teacher claims to beat the student on texts 0 and 2 only
    module.load_trainable_state_dict(knowledge.payload())
    module.load_personal_state_dict(None)
    module.log = module.log_dict = lambda *args, **kwargs: None
    module.on_fit_start()
    taught = module.teacher.taught.nonzero().flatten()
    assert taught.tolist() == [0, 2]  # dual minimum cross-entropy: taught where the teacher's is lower
    batch = public.batch(torch.tensor([0, 2]))
    torch.manual_seed(7)
    got = module.training_step(batch, 0)

    torch.manual_seed(7)
    drawn = taught[torch.randint(len(taught), (2,))]
    ce = F.cross_entropy(module(batch)[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)
    with torch.no_grad():
        teacher_logits = teacher(public.batch(drawn))
    student_logits = module(public.batch(drawn))
    terms = []
    for row, text in enumerate(drawn.tolist()):
        for position in range(int(public.lengths[text]) - 1):  # logits at p predict token p + 1
            values, ids = teacher_logits[row, position].topk(5)
            terms.append(F.kl_div(F.log_softmax(student_logits[row, position, ids] / 2, -1),
                                  F.softmax(values / 2, -1), reduction="sum") * 4)
    expected = 0.7 * ce + 0.3 * torch.stack(terms).mean()
    assert torch.allclose(got, expected, atol=1e-5)


def test_knowledge_is_kept_per_client_and_the_rest_averaged():
    global_payload = OrderedDict([("knowledge.ce", torch.zeros(2)), ("w", torch.zeros(3))])
    updates = [Update("a", OrderedDict([("knowledge.ce", torch.tensor([1.0, 2.0])), ("w", torch.ones(3))]), 1),
               Update("b", OrderedDict([("knowledge.ce", torch.tensor([3.0, 4.0])), ("w", torch.full((3,), 4.0))]), 3)]
    out = KnowledgeGathering(FedAvg(), "knowledge.").aggregate(global_payload, updates)
    assert torch.equal(out["a/knowledge.ce"], torch.tensor([1.0, 2.0]))
    assert torch.equal(out["b/knowledge.ce"], torch.tensor([3.0, 4.0]))
    assert torch.allclose(out["w"], torch.full((3,), (1 * 1 + 3 * 4) / 4))
    assert set(out) == {"a/knowledge.ce", "b/knowledge.ce", "w"}


def test_the_server_takes_each_texts_lowest_ce_client_only_where_it_beats_the_llm(monkeypatch):
    """Three clients' knowledge on four public texts, selected by hand: text 0 from b (0.5 < the LLM's 1.0), texts 1
    and 2 from a (0.7 < 1.0, 4.0 < 5.0), text 3 from nobody (c's 0.6 is the clients' best, the LLM's 0.5 better)."""
    from types import SimpleNamespace

    from fedlit.algorithms.fed_mkt import MutualTransferServer
    from fedlit.lightning_modules.public_knowledge import Knowledge

    def knowledge(fill: int, ce: list[float]) -> Knowledge:
        return Knowledge(torch.full((4, 3, 2), fill, dtype=torch.int32), torch.full((4, 3, 2), float(fill)),
                         torch.tensor(ce))

    clients = {"a": knowledge(1, [2.0, 0.7, 4.0, 0.9]), "b": knowledge(2, [0.5, 0.9, 6.0, 0.8]),
               "c": knowledge(3, [3.0, 0.8, 4.5, 0.6])}
    server = MutualTransferServer.__new__(MutualTransferServer)
    server.inner = FedAvg()
    server.learns, server.config, server.public = True, SimpleNamespace(server_steps=1), None
    server.bridges = {c: SimpleNamespace(carry=lambda k: k) for c in clients}  # one tokenizer: the identity
    server.knowledge = knowledge(0, [1.0, 1.0, 5.0, 0.5])
    taught = []
    monkeypatch.setattr(server, "_distil", lambda teacher, seed: taught.append(teacher) or 0.25)
    monkeypatch.setattr(server, "_own_knowledge", lambda: server.knowledge)
    gathered = canonical({f"{c}/{name}": t for c, k in clients.items() for name, t in k.payload().items()})
    _, rows = server.after_round(gathered, 1, 0)
    (teacher,) = taught
    assert teacher.taught.tolist() == [True, True, True, False]
    assert teacher.knowledge.ids[:, 0, 0].tolist() == [2, 1, 1, 3]  # b, a, a; text 3's best (c), not taught
    assert teacher.knowledge.ce.tolist() == pytest.approx([0.5, 0.7, 4.0, 0.6])
    assert rows == [{"client": "server", "split": "train", "model": "llm", "loss": 0.25, "num_examples": 3}]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"fedavg": True}, "fedavg averages the clients' SLM adapters: only in mode homogeneous"),
    ({"mode": "homogeneous"}, "mode homogeneous: every client trains the same slm"),
    ({"mode": "both"}, "mode must be heterogeneous, homogeneous or llm_to_slm"),
    ({"secure_aggregation": SecureAggregationConfig()}, "fedmkt: secure_aggregation works on adapter updates"),
    ({"slms": {"nobody": None}}, r"slms: no client \['nobody'\]"),
    ({"transfer": None}, "transfer: no public text of '.*' fits max_length 2 tokens for every tokenizer"),
    ({"transfer": {"template": "{nosuchcol}"}}, "transfer.template uses column 'nosuchcol' which the data lacks"),
])
def test_settings_that_cannot_apply_are_refused_by_name(overrides, message, tiny_model_dir, other_tokenizer_model_dir,
                                                        plays_jsonl, tmp_path):
    if "slms" in overrides:
        overrides = {"slms": {"nobody": ModelConfig(str(other_tokenizer_model_dir))}}
    if "transfer" in overrides:
        overrides = {"transfer": transfer(plays_jsonl, **(overrides["transfer"] or {"max_length": 2}))}
    with pytest.raises((ValueError, KeyError), match=message):
        build(tiny_model_dir, other_tokenizer_model_dir, plays_jsonl, tmp_path / "run", **overrides)


def test_llm_to_slm_leaves_the_llm_and_homogeneous_fedavg_shares_the_adapter(tiny_model_dir, other_tokenizer_model_dir,
                                                                            plays_jsonl, tmp_path):
    one_way = build(tiny_model_dir, other_tokenizer_model_dir, plays_jsonl, tmp_path / "one_way", rounds=1,
                    mode="llm_to_slm")
    before = one_way.strategy.llm.trainable_state_dict()
    one_way.fit()
    after = one_way.strategy.llm.trainable_state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert not [r for r in one_way.history if r["client"] == "server"]
    # the server learns nothing from the clients: their knowledge does not travel back (only its unchanged form:
    # an empty change per tensor), and the fit does not compute it
    fits = [r for r in one_way.history if r["split"] == "train"]
    assert fits and all(r["bytes_sent"] < 1024 < r["bytes_received"] for r in fits), fits
    shared = build(tiny_model_dir, other_tokenizer_model_dir, plays_jsonl, tmp_path / "shared", rounds=1,
                   mode="homogeneous", fedavg=True, slms={})
    final = shared.fit()
    adapter = {n for n in final if not n.startswith("knowledge.")}
    assert adapter and all("lora_" in n for n in adapter)
    assert not (tmp_path / "shared" / "client_state" / "personal").exists()


def test_only_the_response_is_knowledge_for_either_tokenizer(tiny_model_dir, other_tokenizer_model_dir):
    texts = ["Fair is foul and foul is fair.\nPlay: beta", "Out, damned spot!\nPlay: beta"]
    starts = [text.index(" beta") for text in texts]
    for directory in (tiny_model_dir, other_tokenizer_model_dir):
        tokenizer = AutoTokenizer.from_pretrained(directory)
        public = PublicTexts.encode(texts, tokenizer, 40, starts)
        for i in range(2):
            assert tokenizer.decode(public.input_ids[i, public.scored[i]]).strip() == "beta"
        model = CausalLMModule(AutoModelForCausalLM.from_pretrained(directory)).eval()
        knowledge = knowledge_of(model, public, 3, 2)
        assert (knowledge.values[~public.scored] == 0).all() and (knowledge.values[public.scored] != 0).all()
        scored = public.scored[1].nonzero().flatten()
        with torch.no_grad():
            logits = model(public.batch(torch.tensor([1])))[0]
        by_hand = F.cross_entropy(logits[scored - 1], public.input_ids[1, scored], reduction="sum") / len(" beta")
        assert torch.allclose(knowledge.ce[1], by_hand)
