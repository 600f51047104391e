"""Private inference (InferDPT) on SmolLM2-135M: answer quality against epsilon, and what a curious server recovers.

Two tasks, each on its config's server held-out split:

- which-play (configs/task_which_play.yaml): answer-set accuracy of the answer;
- continuation (configs/quickstart.yaml): the first half of each held-out line is the prompt, the loss of the true
  second half is the quality.

The server's model is SmolLM2 with the task's federated adapter (``--which-play-adapter``/``--continuation-adapter``,
trained with the config first when absent); the client's local model is SmolLM2 alone (no adapter). Rows: the local
model on the clear prompt (no server), the server's model on the clear prompt (no privacy), and for each epsilon the
extracted answer: the local model's score given the server's continuation of the perturbed prompt and the clear prompt
(the extraction template). Attacks, on what the server received: the tokens as received ("as sent"), the
maximum-likelihood inversion of the mechanism over the candidate table (nearest-neighbour inversion that knows
epsilon), and the server's LLM (its plain instruct model: it restores far better than the task-tuned one) asked to
restore the text; each scored as the share of the prompt's usable tokens (multiset) that the guess contains.

    python experiments/private_inference_table.py [--examples 96] [--json outputs/private_inference.json]
    python experiments/private_inference_table.py --smoke --json OUT --output-dir DIR   (the tiny model: the test suite)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from smoke import parse_experiment_args, tiny_model
from transformers import PreTrainedTokenizerBase

from fedlit.cli import fit_parser, quiet_libraries, run_fit
from fedlit.data.datamodule import IGNORE_INDEX, CausalLMCollator
from fedlit.data.federated import build_federated_data
from fedlit.inference import GenerationServer, InferenceConfig, Query
from fedlit.inference.perturbation import CandidateTable, candidate_table
from fedlit.lightning_modules.causal_lm import shifted_token_loss
from fedlit.lightning_modules.choices import choice_log_likelihoods, choice_token_ids
from fedlit.lightning_modules.generation import generate_texts
from fedlit.models import ModelConfig, load_base_model, load_tokenizer, load_trained_model

EPSILONS = (1.0, 3.0, 6.0, 10.0, math.inf)
TASKS = {"which-play": "configs/task_which_play.yaml", "continuation": "configs/quickstart.yaml"}
RESTORE = ("Many words of the following text were replaced by words that look or mean alike. Write the original "
           "text, nothing else.\n\n{text}")


@dataclass
class Task:
    """Held-out prompts (token ids) with their references: a choice index, or the true continuation's ids."""

    name: str
    prompts: list[list[int]]
    references: list[int] | list[list[int]]
    choices: list[list[int]] | None
    new_tokens: int


def load_task(name: str, config_path: str, limit: int, tokenizer: PreTrainedTokenizerBase) -> Task:
    parser = fit_parser()
    config = parser.parse_args(["--config", config_path, "--loggers", "[]"])
    data = build_federated_data(parser.instantiate(config)["data"], tokenizer).global_val.val_dataset
    rows = [(r["input_ids"], r["labels"]) for r in data.select(range(min(limit, len(data))))]
    if config.evaluation.choices:
        choices = choice_token_ids(config.evaluation.choices, tokenizer)
        starts = [next(i for i, label in enumerate(labels) if label != IGNORE_INDEX) for _, labels in rows]
        answers = [tuple(ids[s:]) for (ids, _), s in zip(rows, starts, strict=True)]
        return Task(name, [ids[:s] for (ids, _), s in zip(rows, starts, strict=True)],
                    [[tuple(c) for c in choices].index(a) for a in answers], choices, 6)
    halves = [len(ids[:-1]) // 2 for ids, _ in rows]  # the EOS is not part of the line
    return Task(name, [ids[:h] for (ids, _), h in zip(rows, halves, strict=True)],
                [ids[h:-1] for (ids, _), h in zip(rows, halves, strict=True)], None, 24)


def logits_of(model):
    return lambda batch: model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@torch.no_grad()
def quality(model, task: Task, inputs: list[list[int]], pad: int, batch_size: int = 16) -> float:
    """Answer-set accuracy (which-play) or the reference's token loss (continuation) after each input."""
    if task.choices is not None:
        correct = 0
        for start in range(0, len(inputs), batch_size):
            chunk = [torch.tensor(i) for i in inputs[start:start + batch_size]]
            scores = choice_log_likelihoods(logits_of(model), chunk, task.choices, pad)
            correct += int((scores.argmax(1) == torch.tensor(task.references[start:start + batch_size])).sum())
        return correct / len(inputs)
    collate, total, count = CausalLMCollator(pad), 0.0, 0
    for start in range(0, len(inputs), batch_size):
        batch = collate([{"input_ids": i + r, "labels": [IGNORE_INDEX] * len(i) + r}
                         for i, r in zip(inputs[start:start + batch_size], task.references[start:start + batch_size],
                                         strict=True)])
        loss, n = shifted_token_loss(logits_of(model)(batch), batch["labels"])
        total, count = total + float(loss) * int(n), count + int(n)
    return total / count


def recovered(original: list[int], guess: list[int], usable: set[int]) -> float:
    """Share of ``original``'s usable tokens (as a multiset) that ``guess`` contains."""
    want = Counter(t for t in original if t in usable)
    return sum((want & Counter(guess)).values()) / max(sum(want.values()), 1)


def restore_prompts(model, tokenizer, received: list[str], lengths: list[int]) -> list[list[int]]:
    """The server's LLM asked to restore each received prompt (chat template, greedy)."""
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": RESTORE.format(text=t)}], tokenize=False,
                                           add_generation_prompt=True) for t in received]
    restored = generate_texts(model, tokenizer, texts, max(lengths) + 8)
    return [tokenizer(r, add_special_tokens=False)["input_ids"] for r in restored]


def epsilon_row(task: Task, epsilon: float, table: CandidateTable, local, server: GenerationServer, tokenizer,
                template: str) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)  # pinned for a reproducible table (a real client's is secret)
    perturbed = [table.perturb(p, epsilon, generator) for p in task.prompts]
    received = [tokenizer.decode(p) for p in perturbed]
    continuations = server.answer(Query(received, task.new_tokens)).texts
    inputs = [tokenizer(template.format(sent=s, continuation=c, prompt=tokenizer.decode(p)), add_special_tokens=False)
              ["input_ids"] for s, c, p in zip(received, continuations, task.prompts, strict=True)]
    usable = set(table.tokens.tolist())
    as_received = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in received]
    inverse = table.inversion(epsilon)
    with server.model.disable_adapter():  # the plain instruct model restores far better than the task-tuned one
        restored = restore_prompts(server.model, tokenizer, received, [len(p) for p in task.prompts])
    n_usable = [sum(t in usable for t in p) for p in task.prompts]
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    return {
        "quality": quality(local, task, inputs, tokenizer.pad_token_id),
        "prompt_epsilon": mean([n * epsilon for n in n_usable]),
        "changed": mean([sum(a != b for a, b in zip(p, q, strict=True)) / max(n, 1)
                         for p, q, n in zip(task.prompts, perturbed, n_usable, strict=True)]),
        "recovered_as_sent": mean([recovered(p, g, usable) for p, g in zip(task.prompts, as_received, strict=True)]),
        "recovered_inversion": mean([recovered(p, [inverse.get(t, t) for t in g], usable)
                                     for p, g in zip(task.prompts, as_received, strict=True)]),
        "recovered_llm": mean([recovered(p, g, usable) for p, g in zip(task.prompts, restored, strict=True)]),
    }


def server_adapter(task: str, given: str | None, output_dir: Path, options: list[str]) -> str:
    """The task's federated adapter: ``given``, or trained with the task's config (and ``options``) into
    ``output_dir``."""
    if given:
        return given
    run_dir = output_dir / f"{task}-server"
    if not (run_dir / "adapter").is_dir():
        parser = fit_parser()
        run_fit("fit", parser.parse_args(["--config", TASKS[task], "--output_dir", str(run_dir),
                                          "--progress", "false", *options]), parser)
    return str(run_dir / "adapter")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=96, help="held-out prompts per task (at most the split)")
    parser.add_argument("--candidates", type=int, default=InferenceConfig.candidates)
    parser.add_argument("--which-play-adapter")
    parser.add_argument("--continuation-adapter")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/private_inference"))
    parser.add_argument("--json", type=Path)
    args, options = parse_experiment_args(parser, "fit")
    quiet_libraries()
    epsilons = EPSILONS
    model = ModelConfig()
    if args.smoke:  # 2 prompts per task, 2 epsilons, a small candidate table
        args.examples, args.candidates, epsilons = 2, 32, (1.0, math.inf)
        model = ModelConfig(tiny_model(args.output_dir))
    torch.manual_seed(0)
    tokenizer = load_tokenizer(model)
    local = load_base_model(model).eval()
    table = candidate_table(local, tokenizer, args.candidates)
    template = InferenceConfig.extraction_template
    results: dict[str, dict] = {}
    for name, config_path in TASKS.items():
        began = time.perf_counter()
        task = load_task(name, config_path, args.examples, tokenizer)
        adapter = server_adapter(name, getattr(args, f"{name.replace('-', '_')}_adapter"), args.output_dir, options)
        server = GenerationServer(load_trained_model(adapter=adapter).eval(), tokenizer, task.new_tokens)
        rows = {"local model alone (clear prompt, no server)": {"quality": quality(local, task, task.prompts,
                                                                                  tokenizer.pad_token_id)},
                "server model on the clear prompt (no privacy)": {"quality": quality(server.model, task, task.prompts,
                                                                                    tokenizer.pad_token_id)}}
        for epsilon in epsilons:
            rows[f"epsilon {epsilon:g}"] = epsilon_row(task, epsilon, table, local, server, tokenizer, template)
            print(name, epsilon, rows[f"epsilon {epsilon:g}"], f"({time.perf_counter() - began:.0f} s)", flush=True)
        results[name] = {"examples": len(task.prompts), "rows": rows}
    show(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"candidates": args.candidates, "results": results}, indent=1))


def show(results: dict[str, dict]) -> None:
    columns = {"quality": "quality", "prompt_epsilon": "prompt epsilon", "changed": "tokens changed",
               "recovered_as_sent": "recovered: as sent", "recovered_inversion": "recovered: inversion",
               "recovered_llm": "recovered: LLM restore"}
    for name, result in results.items():
        metric = "answer-set accuracy" if name == "which-play" else "held-out loss"
        table = Table(title=f"{name}: {result['examples']} held-out prompts, quality = {metric}")
        table.add_column("setting")
        for title in columns.values():
            table.add_column(title)
        for setting, values in result["rows"].items():
            table.add_row(setting, *(f"{values[k]:.3f}" if k in values else "" for k in columns))
        Console().print(table)


if __name__ == "__main__":
    main()
