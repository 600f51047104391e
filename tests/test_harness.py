"""``fedlit evaluate``: a trained adapter scored by lm-evaluation-harness on local task YAMLs (multiple choice and
generate-until, their data in local files), against scores computed by hand with the same model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from fedlit.cli import main  # noqa: E402

QUESTIONS = ["To be or not to be,", "Fair is foul and", "Now is the winter of", "A horse! a horse!"]
CHOICES = [" that is the question.", " foul is fair.", " our discontent.", " my kingdom for a horse!"]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter on the tiny model with non-zero factors (a "trained" one), saved as peft saves it."""
    path = tmp_path_factory.mktemp("harness") / "adapter"
    torch.manual_seed(3)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(path)
    return path


def trained(tiny_model_dir: Path, adapter_dir: Path) -> tuple[PeftModel, AutoTokenizer]:
    return (PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter_dir).eval(),
            AutoTokenizer.from_pretrained(tiny_model_dir))


def continuation_log_likelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context), the continuation's tokens being those of the whole text after the context's."""
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    start = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([whole])).logits[0].float()
    log_probs = torch.log_softmax(logits, -1)
    return sum(log_probs[t - 1, whole[t]].item() for t in range(start, len(whole)))


def greedy(model, tokenizer, context: str, tokens: int) -> str:
    ids = tokenizer(context, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0]


def write_tasks(folder: Path, generations: list[str]) -> tuple[Path, Path]:
    """A multiple-choice task (each question's own ending is the answer) and a generate-until task whose answers are
    the model's own greedy output for the first two questions and something else for the others."""
    folder.mkdir(parents=True, exist_ok=True)
    choice_docs = [{"question": q, "choices": CHOICES, "answer": i} for i, q in enumerate(QUESTIONS)]
    (folder / "choice.jsonl").write_text("".join(json.dumps(d) + "\n" for d in choice_docs))
    answers = [generations[0], generations[1], "zzz", "zzz"]
    (folder / "gen.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n"
                                              for q, a in zip(QUESTIONS, answers, strict=True)))
    common = "dataset_path: json\ntest_split: train\n"
    mc = folder / "tiny_choice.yaml"
    mc.write_text(f"task: tiny_choice\n{common}dataset_kwargs:\n  data_files: {folder / 'choice.jsonl'}\n"
                  "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
                  "doc_to_target: '{{answer}}'\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n")
    gen = folder / "tiny_gen.yaml"
    gen.write_text(f"task: tiny_gen\n{common}dataset_kwargs:\n  data_files: {folder / 'gen.jsonl'}\n"
                   "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
                   "target_delimiter: ''\ngeneration_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 6\n"
                   "  do_sample: false\nmetric_list:\n  - metric: exact_match\n")
    return mc, gen


def test_evaluate_scores_local_tasks_as_a_hand_computation(tiny_model_dir, adapter_dir, tmp_path, capsys):
    model, tokenizer = trained(tiny_model_dir, adapter_dir)
    generations = [greedy(model, tokenizer, q, 6) for q in QUESTIONS]
    mc, gen = write_tasks(tmp_path / "tasks", generations)
    output = tmp_path / "scores.json"

    main(["evaluate", "--adapter", str(adapter_dir), "--base", str(tiny_model_dir),
          "--tasks", json.dumps([str(mc), str(gen)]), "--device", "cpu", "--batch_size", "2", "--output", str(output)])

    printed = capsys.readouterr().out
    assert "tiny_choice" in printed and "tiny_gen" in printed and f"results in {output}" in printed
    results = json.loads(output.read_text())["results"]
    picks = [max(range(len(CHOICES)), key=lambda c: continuation_log_likelihood(model, tokenizer, q, CHOICES[c]))
             for q in QUESTIONS]
    by_hand = sum(pick == i for i, pick in enumerate(picks)) / len(QUESTIONS)
    assert results["tiny_choice"]["acc,none"] == pytest.approx(by_hand)
    expected_gen = (2 + sum(g == "zzz" for g in generations[2:])) / len(QUESTIONS)
    assert results["tiny_gen"]["exact_match,none"] == pytest.approx(expected_gen)
    assert output.with_suffix(".md").read_text().count("tiny_") >= 2


def test_bad_requests_are_named_and_nothing_is_overwritten(tiny_model_dir, adapter_dir, tmp_path, capsys):
    taken = tmp_path / "taken.json"
    taken.write_text("{}")
    for args, message in [
        (["--tasks", '["no_such_task_anywhere"]', "--output", str(tmp_path / "a.json")],
         "harness task(s) ['no_such_task_anywhere']: not a harness task"),
        (["--tasks", f'["{tmp_path / "missing.yaml"}"]', "--output", str(tmp_path / "b.json")],
         "missing.yaml: no such file"),
        (["--tasks", '["x"]', "--output", str(taken)], "exists: fedlit evaluate never overwrites"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["evaluate", "--adapter", str(adapter_dir), "--base", str(tiny_model_dir), "--device", "cpu",
                  *args])
        assert exit_info.value.code == 1
        assert message in capsys.readouterr().err
    assert taken.read_text() == "{}"


@pytest.mark.long
def test_a_run_scores_the_global_adapter_on_the_harness_every_n_rounds(tiny_model_dir, plays_jsonl, tmp_path):
    """``harness:`` in a run: rows ``split: harness`` after rounds 2 and 3 (every 2, and the last), the global
    adapter's multiple-choice accuracy equal to ``fedlit evaluate`` on the saved adapter."""
    import csv

    from fedlit.cli import main as fedlit

    mc, _ = write_tasks(tmp_path / "tasks", ["x", "y", "z", "w"])
    common = ["--model.name_or_path", str(tiny_model_dir), "--data.source", str(plays_jsonl), "--data.num_clients", "3",
              "--data.val_examples_per_client", "2", "--data.global_val_examples", "4", "--data.max_length", "32",
              "--trainer.max_steps", "1", "--trainer.precision", "32-true", "--progress", "false"]
    fedlit(["fit", *common, "--rounds", "3", "--output_dir", str(tmp_path / "run"),
            "--harness", json.dumps({"tasks": [str(mc)], "every": 2, "batch_size": 2})])
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "harness"]
    assert [r["round"] for r in rows] == ["2", "3"] and all(r["client"] == "global" for r in rows)
    fedlit(["evaluate", "--adapter", str(tmp_path / "run" / "adapter"), "--tasks", json.dumps([str(mc)]),
            "--device", "cpu", "--output", str(tmp_path / "after.json")])
    after = json.loads((tmp_path / "after.json").read_text())["results"]["tiny_choice"]["acc,none"]
    assert float(rows[-1]["harness/tiny_choice/acc"]) == pytest.approx(after)
