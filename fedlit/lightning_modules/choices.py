"""Answer-set evaluation: pick the most likely of a fixed set of answers, as multiple-choice benchmarks do.

Unlike greedy generation, this scores the model on the task and not on the answer format too: an
untrained model that would never *write* "hamlet" still ranks "hamlet" above "macbeth" or not.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from fedlit.data.datamodule import IGNORE_INDEX, CausalLMCollator


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
    collate, device = CausalLMCollator(pad_token_id), prompts[0].device
    scores = []
    for candidate in candidates:
        batch = collate([{"input_ids": p.tolist() + candidate, "labels": [IGNORE_INDEX] * len(p) + candidate}
                         for p in prompts])
        batch = {key: value.to(device) for key, value in batch.items()}
        logits = logits_of(batch)
        token_nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), batch["labels"][:, 1:],
                                    ignore_index=IGNORE_INDEX, reduction="none")
        scores.append(-token_nll.sum(dim=1))
    return torch.stack(scores, dim=1)
