"""Generation-based evaluation: greedy answers to the prompts of instruction examples, scored by exact match."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from fedlit.data.datamodule import IGNORE_INDEX


def split_prompts(batch: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per row: the prompt (tokens before the first label) and the reference answer (labelled tokens)."""
    prompts, answers = [], []
    for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        labelled = (labels != IGNORE_INDEX).nonzero().flatten()
        start = int(labelled[0]) if len(labelled) else len(ids)
        prompts.append(ids[:start])
        answers.append(labels[labelled])
    return prompts, answers


def normalise(text: str) -> str:
    """Case- and whitespace-insensitive; only the first line of a generation counts."""
    lines = text.strip().splitlines()
    return " ".join(lines[0].split()).casefold() if lines else ""


@torch.no_grad()
def greedy_answers(model, prompts: list[torch.Tensor], max_new_tokens: int, pad_token_id: int,
                   eos_token_id: int) -> list[torch.Tensor]:
    """Left-pad the prompts into one batch and decode greedily; returns only the new tokens of each row."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long, device=prompts[0].device)
    attention_mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = prompt
        attention_mask[row, width - len(prompt):] = 1
    output = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                            do_sample=False, pad_token_id=pad_token_id, eos_token_id=eos_token_id)
    return [row[width:] for row in output]


def generate_texts(model, tokenizer: PreTrainedTokenizerBase, texts: list[str], max_new_tokens: int,
                   batch_size: int = 16) -> list[str]:
    """Greedy continuation of each text (tokenized without special tokens), decoded, in batches. A text too long
    for the model's positions together with ``max_new_tokens`` is refused, naming it (never cut silently)."""
    device = next(model.parameters()).device
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    out = []
    for start in range(0, len(texts), batch_size):
        prompts = [torch.tensor(tokenizer(t, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id],
                                device=device) for t in texts[start:start + batch_size]]
        for index, prompt in enumerate(prompts, start):
            if positions is not None and len(prompt) + max_new_tokens > positions:
                raise ValueError(f"text {index} has {len(prompt)} tokens: with {max_new_tokens} new tokens it exceeds "
                                 f"the model's {positions} positions; shorten it")
        rows = greedy_answers(model, prompts, max_new_tokens, tokenizer.pad_token_id, tokenizer.eos_token_id)
        out.extend(tokenizer.decode(row, skip_special_tokens=True) for row in rows)
    return out


def exact_matches(predictions: list[torch.Tensor], answers: list[torch.Tensor],
                  tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """1.0 where the decoded prediction equals the reference answer after :func:`normalise`, else 0.0."""
    return torch.tensor([
        float(normalise(tokenizer.decode(p, skip_special_tokens=True))
              == normalise(tokenizer.decode(a, skip_special_tokens=True)))
        for p, a in zip(predictions, answers, strict=True)
    ])
