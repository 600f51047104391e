"""Preference data for DPO: each record a prompt, a chosen and a rejected answer, split across clients as
instruction data is (every partitioner, the same held-out splits); a record missing a field is refused by row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from fedlit.data.datamodule import IGNORE_INDEX, CausalLMCollator, CausalLMDataModule, answer_ids, prompt_ids
from fedlit.data.federated import DataConfig
from fedlit.data.which_play import WHICH_PLAY_SOURCE

ANSWERS = ("chosen", "rejected")


@dataclass
class PreferenceDataConfig(DataConfig):
    """:class:`~fedlit.data.federated.DataConfig` for preference pairs: where records come from and how they are
    split is the same; what a record says is three templates over its columns (``"{prompt}"``, ``"{chosen}"``,
    ``"{rejected}"`` by default: a file with other column names names them here, e.g. ``"{question}"``).

    Args:
        source: as for instruction data; by default the built-in ``shakespeare-which-play`` pairs (the right play
            of a line chosen, another rejected).
        prompt_template: the prompt (a user turn with ``chat_template``).
        chosen_template: the preferred answer (the assistant's turn with ``chat_template``).
        rejected_template: the dispreferred answer.
        empty_records: a record with an empty or null field is an ``error`` by default (named by row and field:
            a pair with a hole is a broken label), or ``drop`` it.

    ``template``, ``response_template`` and ``packing`` do not apply to pairs and are refused when set.
    """

    source: str = WHICH_PLAY_SOURCE
    prompt_template: str | None = "{prompt}"
    chosen_template: str = "{chosen}"
    rejected_template: str = "{rejected}"
    empty_records: Literal["drop", "error"] = "error"

    def __post_init__(self) -> None:
        super().__post_init__()
        plain = DataConfig()
        refused = [key for key in ("template", "response_template", "packing")
                   if getattr(self, key) != getattr(plain, key)]
        if refused:
            raise ValueError(f"data.{refused[0]} does not apply to preference data: set data.prompt_template, "
                             "data.chosen_template and data.rejected_template")
        if self.prompt_template is None:
            raise ValueError("data.prompt_template: preference data needs a prompt (e.g. \"{prompt}\")")

    def templates(self) -> dict[str, tuple[str, str]]:
        return {"prompt": ("prompt_template", self.prompt_template),
                **{answer: (f"{answer}_template", getattr(self, f"{answer}_template")) for answer in ANSWERS}}

    def examples(self, fields: Dataset, tokenizer: PreTrainedTokenizerBase) -> Dataset:
        return tokenize_preferences(fields, tokenizer, self.max_length, self.chat_template)

    def data_module(self, train: Dataset | None, val: Dataset, pad_token_id: int) -> CausalLMDataModule:
        return PreferenceDataModule(train, val, pad_token_id, self.batch_size)


def tokenize_preferences(fields: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int,
                         chat_template: bool = False) -> Dataset:
    """``prompt``/``chosen``/``rejected`` -> ``chosen_input_ids``/``chosen_labels`` and the rejected pair: each
    answer after the same prompt, labelled on the answer and its EOS only. Long pairs lose the start of the prompt
    first (the same cut for both answers), then the end of the answers."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {f"{answer}_{part}": [] for answer in ANSWERS for part in ("input_ids", "labels")}
        for prompt, *texts in zip(batch["prompt"], *(batch[answer] for answer in ANSWERS), strict=True):
            answers = [answer_ids(tokenizer, text, max_length) for text in texts]
            context = prompt_ids(tokenizer, prompt, chat_template, max_length - max(map(len, answers)))
            for answer, ids in zip(ANSWERS, answers, strict=True):
                out[f"{answer}_input_ids"].append(context + ids)
                out[f"{answer}_labels"].append([IGNORE_INDEX] * len(context) + ids)
        return out

    return fields.map(encode, batched=True, remove_columns=fields.column_names)


class PreferenceCollator:
    """A batch of pairs as one padded batch of ``2 x pairs`` sequences: the chosen answers first, then the rejected
    ones in the same order (one forward pass scores both; :func:`split_pairs` takes them apart)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id
        self.sequences = CausalLMCollator(pad_token_id)

    def __call__(self, pairs: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return self.sequences([{"input_ids": pair[f"{answer}_input_ids"], "labels": pair[f"{answer}_labels"]}
                               for answer in ANSWERS for pair in pairs])


def split_pairs(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence values of a :class:`PreferenceCollator` batch -> (chosen, rejected)."""
    chosen, rejected = values.chunk(2)
    return chosen, rejected


class PreferenceDataModule(CausalLMDataModule):
    """One party's preference pairs, batched by :class:`PreferenceCollator`."""

    def __init__(self, train: Dataset | None, val: Dataset, pad_token_id: int, batch_size: int = 8) -> None:
        super().__init__(train, val, pad_token_id, batch_size)
        self.collate = PreferenceCollator(pad_token_id)
