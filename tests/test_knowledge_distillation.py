"""Knowledge distillation into a PEFT student: the loss by hand, the vocabulary check, what travels."""

import copy
import math

import lightning as L
import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from fedlit.data import CausalLMDataModule, tokenize
from fedlit.lightning_modules import (
    DistillationLossConfig,
    KnowledgeDistillationModule,
    OptimizerConfig,
    build_peft_model,
)
from fedlit.lightning_modules.knowledge_distillation import distillation_kl


def test_distillation_kl_matches_hand_computation():
    student = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [2.0, -1.0, 0.0], [0.0, 0.0, 0.0]]])
    teacher = torch.tensor([[[0.0, 1.0, 0.0], [1.0, -1.0, 2.0], [0.0, 0.0, 3.0], [9.0, 9.0, 9.0]]])
    labels = torch.tensor([[-100, 2, -100, 1]])  # positions 0 and 2 predict labelled tokens
    temperature = 2.0
    total = 0.0
    for position in (0, 2):
        p = [math.exp(t / temperature) for t in teacher[0, position].tolist()]
        q = [math.exp(s / temperature) for s in student[0, position].tolist()]
        p = [x / sum(p) for x in p]
        q = [x / sum(q) for x in q]
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    expected = temperature**2 * total / 2
    assert distillation_kl(student, teacher, labels, temperature).item() == pytest.approx(expected, rel=1e-6)
    assert distillation_kl(teacher, teacher, labels, temperature).item() == pytest.approx(0.0, abs=1e-7)


@pytest.fixture
def student_and_teacher(tiny_model_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    student = build_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), seed=0)
    torch.manual_seed(1)
    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.num_hidden_layers, config.hidden_size, config.intermediate_size = 3, 48, 96  # a bigger teacher
    return student, LlamaForCausalLM(config), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_vocabulary_mismatch_is_refused(student_and_teacher, tiny_model_dir):
    student, _, _ = student_and_teacher
    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.vocab_size += 7
    with pytest.raises(ValueError, match=r"share the tokenizer vocabulary; the student has \d+ token embeddings, "
                                         r"the teacher \d+"):
        KnowledgeDistillationModule(student, LlamaForCausalLM(config))


def test_only_the_student_adapter_trains_and_travels(student_and_teacher):
    student, teacher, tokenizer = student_and_teacher
    teacher_before = copy.deepcopy(teacher.state_dict())
    module = KnowledgeDistillationModule(student, teacher, DistillationLossConfig(kd_weight=0.7, temperature=2.0),
                                         OptimizerConfig(lr=1e-2))
    before = module.trainable_state_dict()
    assert before and all("lora_" in name for name in before)
    pairs = Dataset.from_dict({"prompt": ["To be or"] * 8, "response": [" not to be"] * 8})
    data = CausalLMDataModule(tokenize(pairs, tokenizer, 32), tokenize(pairs, tokenizer, 32), tokenizer.pad_token_id, 4)
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, accelerator="cpu")
    trainer.fit(module, datamodule=data)
    after = module.trainable_state_dict()
    assert after.keys() == before.keys() and any(not torch.equal(after[n], before[n]) for n in after)
    assert all(torch.equal(t, teacher_before[n]) for n, t in teacher.state_dict().items())
    assert not teacher.training
    assert not any(name.startswith("teacher") for name in module.state_dict())  # never checkpointed with the student
    metrics = trainer.callback_metrics
    expected = 0.3 * metrics["train_ce_epoch"] + 0.7 * metrics["train_kd_epoch"]
    assert metrics["train_loss_epoch"].item() == pytest.approx(expected.item(), rel=1e-5)
