"""FedCoLLM: clients federate the SLM adapter; the server distils both ways between it and its LLM."""

import csv

import pytest
import torch
from conftest import with_federation
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from fedlit.algorithms import fed_co_llm
from fedlit.data import GLOBAL, DataConfig
from fedlit.lightning_modules import (
    CausalLMModule,
    DistillationConfig,
    DistillationLossConfig,
    MutualDistillation,
    OptimizerConfig,
)
from fedlit.lightning_modules.knowledge_distillation import distillation_kl
from fedlit.models import ModelConfig
from fedlit.models.offsite import decoder_blocks
from fedlit.payload import from_bytes


@pytest.fixture(scope="module")
def llm_dir(tiny_model_dir, tmp_path_factory):
    """A 4-block, wider sibling of the tiny model (same tokenizer): the server's LLM."""
    path = tmp_path_factory.mktemp("llm")
    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.num_hidden_layers, config.hidden_size, config.intermediate_size = 4, 48, 96
    torch.manual_seed(5)
    LlamaForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


def public(plays_jsonl, steps, **overrides):
    return DistillationConfig(**{"steps": steps, "lr": 1e-2, "source": str(plays_jsonl), "exclude": {"play": ["alpha"]},
                                 "max_length": 32, "batch_size": 4, **overrides})


def build(llm_dir, tiny_model_dir, plays_jsonl, output_dir, **overrides):
    kwargs = dict(
        llm=ModelConfig(str(llm_dir)), slm=ModelConfig(str(tiny_model_dir)),
        slm_init=public(plays_jsonl, 0), server=public(plays_jsonl, 3),
        data=DataConfig(source=str(plays_jsonl), num_clients=3, val_examples_per_client=4, global_val_examples=6,
                        batch_size=4, max_length=32),
        peft=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        optimizer=OptimizerConfig(lr=1e-2), rounds=2, output_dir=output_dir, loggers=[], progress=False,
        trainer_kwargs={"max_steps": 2, "accelerator": "cpu"},
    )
    return fed_co_llm(**with_federation({**kwargs, **overrides}))


def test_mutual_distillation_loss_is_each_sides_ce_kd_mix_summed():
    torch.manual_seed(0)
    vocab, config = 11, DistillationLossConfig(kd_weight=0.3, temperature=1.5)
    llm = CausalLMModule(LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32,
                                                      num_hidden_layers=2, num_attention_heads=2)))
    slm = CausalLMModule(LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=8, intermediate_size=16,
                                                      num_hidden_layers=1, num_attention_heads=2)))
    batch = {"input_ids": torch.randint(0, vocab, (2, 5)), "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    batch["labels"] = batch["input_ids"].clone()
    batch["labels"][0, :2] = -100
    module = MutualDistillation(llm, slm, config)
    module.log_dict = lambda *args, **kwargs: None
    total = module.training_step(batch, 0)
    expected = 0
    for student, teacher in ((llm, slm), (slm, llm)):
        s, t = student(batch), teacher(batch)
        ce = torch.nn.functional.cross_entropy(s[:, :-1].reshape(-1, vocab), batch["labels"][:, 1:].reshape(-1),
                                               ignore_index=-100)
        expected = expected + 0.7 * ce + 0.3 * distillation_kl(s, t, batch["labels"], 1.5)
    assert torch.allclose(total, expected, atol=1e-5)
    total.backward()  # each side's gradient comes from its own term: the teacher's logits are detached
    llm_grads = [p.grad.clone() for p in llm.parameters()]
    for p in [*llm.parameters(), *slm.parameters()]:
        p.grad = None
    s, t = llm(batch), slm(batch)
    own = 0.7 * torch.nn.functional.cross_entropy(s[:, :-1].reshape(-1, vocab), batch["labels"][:, 1:].reshape(-1),
                                                  ignore_index=-100) + 0.3 * distillation_kl(s, t.detach(),
                                                                                             batch["labels"], 1.5)
    own.backward()
    assert all(torch.allclose(g, p.grad, atol=1e-6) for g, p in zip(llm_grads, llm.parameters(), strict=True))


def test_only_the_slm_adapter_travels_and_both_adapters_evolve(llm_dir, tiny_model_dir, plays_jsonl, tmp_path,
                                                               monkeypatch):
    loop = build(llm_dir, tiny_model_dir, plays_jsonl, tmp_path / "co")
    server = loop.strategy
    llm_initial = server.llm.trainable_state_dict()
    slm_adapter = loop.module_factory().trainable_state_dict()
    client_type = type(next(iter(loop.clients.values())))
    original_fit, sent = client_type.fit, []

    def spy(client, ins, *args, **kwargs):
        result = original_fit(client, ins, *args, **kwargs)
        sent.extend([from_bytes(ins.global_wire), from_bytes(result.wire)])
        return result

    monkeypatch.setattr(client_type, "fit", spy)
    final = loop.fit()
    shapes = {n: t.shape for n, t in slm_adapter.items()}
    llm_shapes = {n: t.shape for n, t in llm_initial.items()}
    assert shapes != llm_shapes  # same LoRA names on both models, but the LLM is wider
    assert len(sent) == 3 * 2 * 2 and all({n: t.shape for n, t in p.items()} == shapes for p in sent)
    llm_final = server.llm.trainable_state_dict()
    assert any(not torch.equal(llm_final[n], llm_initial[n]) for n in llm_final)  # the LLM's adapter learned
    assert set(final) == set(slm_adapter)
    with open(tmp_path / "co" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    llm_val = [r for r in rows if r["model"] == "llm" and r["split"] == "val"]
    assert [(r["round"], r["client"]) for r in llm_val] == [("0", GLOBAL), ("1", GLOBAL), ("2", GLOBAL)]
    server_train = {(r["round"], r["model"]) for r in rows if r["client"] == "server"}
    assert server_train == {("1", "llm"), ("1", "slm"), ("2", "llm"), ("2", "slm")}
    assert (tmp_path / "co" / "llm_adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "co" / "client_slm" / "config.json").is_file()


def test_server_step_changes_the_slm_adapter_clients_receive(llm_dir, tiny_model_dir, plays_jsonl, tmp_path):
    """With server steps 0 the run is plain FedAvg; with steps > 0 the global SLM adapter differs."""
    plain = build(llm_dir, tiny_model_dir, plays_jsonl, tmp_path / "plain", server=public(plays_jsonl, 0), rounds=1)
    plain_final = plain.fit()
    assert not any(r.get("model") == "llm" and r["split"] == "train" for r in plain.history)
    co = build(llm_dir, tiny_model_dir, plays_jsonl, tmp_path / "co", rounds=1)
    co_final = co.fit()
    assert any(not torch.equal(co_final[n], plain_final[n]) for n in co_final)


def test_resume_is_bit_identical_including_the_llm_adapter(llm_dir, tiny_model_dir, plays_jsonl, tmp_path):
    whole = build(llm_dir, tiny_model_dir, plays_jsonl, tmp_path / "whole")
    whole_final = whole.fit()
    whole_llm = whole.strategy.llm.trainable_state_dict()
    first = build(llm_dir, tiny_model_dir, plays_jsonl, tmp_path / "split", rounds=1)
    first.fit()
    resumed = build(llm_dir, tiny_model_dir, plays_jsonl, tmp_path / "split")
    resumed_final = resumed.fit(resume=True)
    assert all(torch.equal(resumed_final[n], whole_final[n]) for n in whole_final)
    resumed_llm = resumed.strategy.llm.trainable_state_dict()
    assert all(torch.equal(resumed_llm[n], whole_llm[n]) for n in whole_llm)


def test_slm_init_distils_all_slm_weights_from_the_llm(llm_dir, tiny_model_dir, plays_jsonl, tmp_path):
    def kl_to_llm(slm_dir):
        slm = AutoModelForCausalLM.from_pretrained(slm_dir)
        llm = AutoModelForCausalLM.from_pretrained(llm_dir)
        ids = torch.tensor([[5, 17, 42, 8, 99, 3, 61, 23]])
        labels = ids.clone()
        with torch.no_grad():
            return float(distillation_kl(slm(input_ids=ids).logits, llm(input_ids=ids).logits, labels, 1.0))

    build(llm_dir, tiny_model_dir, plays_jsonl, tmp_path / "plain", rounds=1, server=public(plays_jsonl, 0))
    build(llm_dir, tiny_model_dir, plays_jsonl, tmp_path / "init", rounds=1, server=public(plays_jsonl, 0),
          slm_init=public(plays_jsonl, 40, lr=3e-3), loss=DistillationLossConfig(kd_weight=1.0, temperature=1.0))
    plain, distilled = (kl_to_llm(tmp_path / run / "client_slm") for run in ("plain", "init"))
    assert distilled < 0.5 * plain
    assert len(decoder_blocks(AutoModelForCausalLM.from_pretrained(tmp_path / "init" / "client_slm"))[1]) == 2


def test_vocabulary_mismatch_names_both_models(llm_dir, tiny_model_dir, plays_jsonl, tmp_path):
    other = tmp_path / "other-vocab"
    config = LlamaConfig.from_pretrained(llm_dir)
    config.vocab_size += 3
    LlamaForCausalLM(config).save_pretrained(other)
    AutoTokenizer.from_pretrained(llm_dir).save_pretrained(other)
    with pytest.raises(ValueError, match=r"FedCoLLM: slm '.*', llm '.*other-vocab'.*LLM and SLM to share the "
                                         r"tokenizer vocabulary; the SLM has \d+ token embeddings, the LLM \d+"):
        build(other, tiny_model_dir, plays_jsonl, tmp_path / "bad", llm=ModelConfig(str(other)))
