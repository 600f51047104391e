"""FedHeteroLLM: per-client teachers of different sizes, one mentee whose adapter alone travels."""

import copy

import pytest
import torch
from conftest import with_federation
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from fedlit.algorithms import fed_hetero_llm
from fedlit.data import DataConfig
from fedlit.lightning_modules import KnowledgeDistillationModule, OptimizerConfig
from fedlit.models import ModelConfig, load_base_model
from fedlit.models.offsite import decoder_blocks


@pytest.fixture(scope="module")
def four_block_dir(tiny_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("four-block")
    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.num_hidden_layers = 4
    torch.manual_seed(3)
    LlamaForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


def build(four_block_dir, tiny_model_dir, plays_jsonl, tmp_path, **overrides):
    kwargs = dict(
        teachers={"alpha": ModelConfig(str(four_block_dir)), "beta": ModelConfig(str(tiny_model_dir)),
                  "gamma": ModelConfig(str(four_block_dir))},
        mentee=ModelConfig(str(four_block_dir), keep_blocks=3),
        data=DataConfig(source=str(plays_jsonl), num_clients=3, val_examples_per_client=4, global_val_examples=6,
                        batch_size=4, max_length=32),
        optimizer=OptimizerConfig(lr=1e-2), rounds=1, output_dir=tmp_path / "hetero", loggers=[], progress=False,
        trainer_kwargs={"max_steps": 3, "accelerator": "cpu"},
    )
    return fed_hetero_llm(**with_federation({**kwargs, **overrides}))


def test_each_client_distils_from_its_own_teacher_and_only_the_mentee_adapter_travels(
        four_block_dir, tiny_model_dir, plays_jsonl, tmp_path):
    loop = build(four_block_dir, tiny_model_dir, plays_jsonl, tmp_path)
    modules = {cid: c.module_factory() for cid, c in loop.clients.items()}
    assert all(isinstance(m, KnowledgeDistillationModule) for m in modules.values())
    assert modules["alpha"].teacher is modules["gamma"].teacher  # one copy per distinct teacher
    assert [len(decoder_blocks(modules[c].teacher)[1]) for c in sorted(modules)] == [4, 2, 4]
    mentee = modules["alpha"].model
    assert len(decoder_blocks(mentee)[1]) == 3 and all(m.model is mentee for m in modules.values())
    teachers_before = {c: copy.deepcopy(m.teacher.state_dict()) for c, m in modules.items()}
    initial = loop.module_factory().trainable_state_dict()
    final = loop.fit()
    assert final.keys() == initial.keys() and all("lora_" in n for n in final)
    assert any(not torch.equal(final[n], initial[n]) for n in final)
    for client_id, module in modules.items():
        assert all(torch.equal(t, teachers_before[client_id][n]) for n, t in module.teacher.state_dict().items())


def test_teachers_must_match_the_clients_and_the_vocabulary(four_block_dir, tiny_model_dir, plays_jsonl, tmp_path):
    with pytest.raises(ValueError, match=r"no model for clients \['gamma'\], models for unknown clients \['x'\]"):
        build(four_block_dir, tiny_model_dir, plays_jsonl, tmp_path,
              teachers={"alpha": ModelConfig(str(tiny_model_dir)), "beta": ModelConfig(str(tiny_model_dir)),
                        "x": ModelConfig(str(tiny_model_dir))})
    other_vocab = tmp_path / "other-vocab"
    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.vocab_size += 5
    LlamaForCausalLM(config).save_pretrained(other_vocab)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(other_vocab)
    teachers = {play: ModelConfig(str(tiny_model_dir)) for play in ("alpha", "beta", "gamma")}
    teachers["beta"] = ModelConfig(str(other_vocab))
    with pytest.raises(ValueError, match="teacher of client 'beta'.*share the tokenizer vocabulary"):
        build(four_block_dir, tiny_model_dir, plays_jsonl, tmp_path, teachers=teachers)


def test_keep_blocks_derives_a_smaller_model_by_layer_drop(four_block_dir):
    full = load_base_model(ModelConfig(str(four_block_dir)))
    smaller = load_base_model(ModelConfig(str(four_block_dir), keep_blocks=3))
    prefix, blocks = decoder_blocks(smaller)
    assert len(blocks) == 3 and not any(p.requires_grad for p in smaller.parameters())
    kept = {0: 0, 1: 1, 2: 3}  # first, an evenly spaced middle one, last
    for small_index, full_index in kept.items():
        for name, tensor in blocks[small_index].state_dict().items():
            assert torch.equal(tensor, decoder_blocks(full)[1][full_index].state_dict()[name])
    with pytest.raises(ValueError, match="keep_blocks for model .* must be in 3..4"):
        load_base_model(ModelConfig(str(four_block_dir), keep_blocks=9))
