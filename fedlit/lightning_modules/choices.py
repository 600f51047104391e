"""Answer-set evaluation: pick the most likely of a fixed set of answers, as multiple-choice benchmarks do.

Unlike greedy generation, this scores the model on the task and not on the answer format too: an
untrained model that would never *write* "hamlet" still ranks "hamlet" above "macbeth" or not.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from fedlit.data.datamodule import IGNORE_INDEX


def choice_token_ids(choices: list[str], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """Each choice tokenised exactly as :func:`fedlit.data.tokenize` tokenises a response, EOS included."""
    return [tokenizer(choice, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for choice in choices]


def reference_indices(answers: list[torch.Tensor], candidates: list[list[int]],
                      tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Which candidate each reference answer is; a reference outside the answer set raises, naming it."""
    index = {tuple(c): i for i, c in enumerate(candidates)}
    found = []
    for answer in answers:
        if tuple(answer.tolist()) not in index:
            text = tokenizer.decode(answer, skip_special_tokens=True)
            raise ValueError(f"reference answer {text!r} is not one of evaluation.choices")
        found.append(index[tuple(answer.tolist())])
    return torch.tensor(found)


@torch.no_grad()
def choice_log_likelihoods(logits_of: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                           prompts: list[torch.Tensor], candidates: list[list[int]],
                           pad_token_id: int) -> torch.Tensor:
    """``[rows, choices]``: log P(candidate | prompt), summed over the candidate's tokens.

    ``logits_of`` maps a right-padded batch to logits aligned with its ``input_ids`` (a module's forward).
    One forward pass per candidate keeps memory at one validation batch's worth.
    """
    scores = []
    for candidate in candidates:
        rows = [torch.cat([p, p.new_tensor(candidate)]) for p in prompts]
        width = max(len(r) for r in rows)
        input_ids = prompts[0].new_full((len(rows), width), pad_token_id)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        attention_mask = torch.zeros_like(input_ids)
        for i, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
            input_ids[i, : len(row)] = row
            labels[i, len(prompt): len(row)] = row[len(prompt):]
            attention_mask[i, : len(row)] = 1
        logits = logits_of({"input_ids": input_ids, "attention_mask": attention_mask})
        token_nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), labels[:, 1:],
                                    ignore_index=IGNORE_INDEX, reduction="none")
        scores.append(-token_nll.sum(dim=1))
    return torch.stack(scores, dim=1)
