"""Validation metrics: token accuracy and generation exact match, against plain transformers."""

import lightning as L
import numpy as np
import pytest
import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedlit.data import CausalLMCollator, tokenize
from fedlit.lightning_modules import CausalLMModule, EvaluationConfig
from fedlit.lightning_modules.generation import normalise, split_prompts

PROMPTS = ["To be or not", "Fair is foul", "Now is the winter", "A horse! a horse!", "Out, damned"]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def validate(model, tokenizer, pairs, **evaluation):
    data = tokenize(Dataset.from_dict(pairs), tokenizer, max_length=32)
    module = CausalLMModule(model, evaluation=EvaluationConfig(**evaluation), tokenizer=tokenizer)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    loader = DataLoader(data, batch_size=3, collate_fn=CausalLMCollator(tokenizer.pad_token_id))
    return trainer.validate(module, loader, verbose=False)[0]


def test_exact_match_agrees_with_unbatched_generation(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    own_answers = []
    for prompt in PROMPTS:  # the model's own greedy continuation, one prompt at a time, no padding
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        own_answers.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    assert len({normalise(a) for a in own_answers}) > 1, own_answers  # distinct, non-trivial answers
    assert validate(model, tokenizer, {"prompt": PROMPTS, "response": own_answers},
                    generate_max_new_tokens=3)["val_exact_match"] == 1.0
    wrong = own_answers[1:] + own_answers[:1]
    expected = sum(normalise(a) == normalise(b) for a, b in zip(wrong, own_answers, strict=True)) / len(PROMPTS)
    assert validate(model, tokenizer, {"prompt": PROMPTS, "response": wrong},
                    generate_max_new_tokens=3)["val_exact_match"] == pytest.approx(expected)


def test_token_accuracy_matches_hand_count(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    pairs = {"prompt": PROMPTS, "response": [" my lord"] * len(PROMPTS)}
    metrics = validate(model, tokenizer, pairs)
    correct = total = 0
    for example in tokenize(Dataset.from_dict(pairs), tokenizer, max_length=32):
        ids, labels = torch.tensor([example["input_ids"]]), torch.tensor(example["labels"])
        with torch.no_grad():
            predicted = model(input_ids=ids).logits[0, :-1].argmax(-1)
        mask = labels[1:] != -100
        correct += int((predicted[mask] == labels[1:][mask]).sum())
        total += int(mask.sum())
    assert metrics["val_token_accuracy"] == pytest.approx(correct / total)
    assert "val_exact_match" not in metrics


def test_choice_accuracy_matches_unpadded_likelihood_ranking(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    choices = [" the", " my", " be"]  # one token each, so the random model's ranking varies with the prompt
    best = []
    for prompt in PROMPTS:  # rank the answers by hand: one unpadded sequence per prompt and answer
        context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        scores = []
        for choice in choices:
            answer = tokenizer(choice, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            with torch.no_grad():
                logp = model(input_ids=torch.tensor([context + answer])).logits[0].log_softmax(-1)
            scores.append(sum(float(logp[len(context) + i - 1, t]) for i, t in enumerate(answer)))
        best.append(int(np.argmax(scores)))
    assert len(set(best)) > 1, best
    references = [choices[b] for b in best]
    assert validate(model, tokenizer, {"prompt": PROMPTS, "response": references},
                    choices=choices)["val_choice_accuracy"] == 1.0
    references[:2] = [choices[(b + 1) % len(choices)] for b in best[:2]]
    assert validate(model, tokenizer, {"prompt": PROMPTS, "response": references},
                    choices=choices)["val_choice_accuracy"] == pytest.approx(3 / 5)


def test_reference_outside_the_answer_set_is_named(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="' sir' is not one of evaluation.choices"):
        validate(model, tokenizer, {"prompt": PROMPTS[:2], "response": [" madam", " sir"]}, choices=[" madam"])


def test_split_prompts_and_normalise():
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]]),
             "labels": torch.tensor([[-100, -100, 7, 8], [-100, 10, 11, -100]])}
    prompts, answers = split_prompts(batch)
    assert [p.tolist() for p in prompts] == [[5, 6], [9]]
    assert [a.tolist() for a in answers] == [[7, 8], [10, 11]]
    assert normalise("  Hamlet \n and more") == "hamlet"


def test_generation_needs_a_tokenizer(model_and_tokenizer):
    with pytest.raises(ValueError, match="need the tokenizer"):
        CausalLMModule(model_and_tokenizer[0], evaluation=EvaluationConfig(generate_max_new_tokens=2))


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_loss_perplexity_and_accuracy_match_torchmetrics_on_full_logits(model_and_tokenizer, precision):
    """Validation works on the labelled rows of the logits only; torchmetrics' Perplexity and MulticlassAccuracy
    over the full float logits (what it replaced) give the same numbers."""
    from torchmetrics.classification import MulticlassAccuracy
    from torchmetrics.text import Perplexity

    model, tokenizer = model_and_tokenizer
    pairs = {"prompt": PROMPTS, "response": [" my lord, the rest is silence"] * len(PROMPTS)}
    data = tokenize(Dataset.from_dict(pairs), tokenizer, max_length=32)
    module = CausalLMModule(model, tokenizer=tokenizer)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        precision=precision)
    loader = DataLoader(data, batch_size=2, collate_fn=CausalLMCollator(tokenizer.pad_token_id))
    metrics = trainer.validate(module, loader, verbose=False)[0]
    perplexity = Perplexity(ignore_index=-100)
    accuracy = MulticlassAccuracy(num_classes=model.config.vocab_size, ignore_index=-100, average="micro")
    for batch in loader:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        perplexity.update(logits[:, :-1].float(), batch["labels"][:, 1:])
        accuracy.update(logits[:, :-1].argmax(-1), batch["labels"][:, 1:])
    assert metrics["val_perplexity"] == pytest.approx(float(perplexity.compute()), rel=1e-5)
    assert metrics["val_loss"] == pytest.approx(float(np.log(perplexity.compute())), rel=1e-5)
    assert metrics["val_token_accuracy"] == pytest.approx(float(accuracy.compute()), abs=1e-7)
