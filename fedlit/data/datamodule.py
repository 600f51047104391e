"""Tokenised causal-LM data for one client (or the server's held-out split) as a LightningDataModule."""

from __future__ import annotations

import lightning as L
import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, chat_template: bool, room: int) -> list[int]:
    """A prompt's last ``room`` tokens (none if ``room`` <= 0: the start of a long prompt goes first): as a user turn
    through the tokenizer's chat template (with the assistant's turn opened), or as plain text."""
    if room <= 0:
        return []
    return _all_prompt_ids(tokenizer, prompt, chat_template)[-room:]


def _all_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, chat_template: bool) -> list[int]:
    if chat_template:
        return list(tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
        ))
    return tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []


def answer_ids(tokenizer: PreTrainedTokenizerBase, answer: str, max_length: int) -> list[int]:
    """An answer's tokens, cut to leave room for its EOS, then the EOS."""
    return [*tokenizer(answer, add_special_tokens=False)["input_ids"][: max_length - 1], tokenizer.eos_token_id]


def tokenize(
    pairs: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int, chat_template: bool = False
) -> Dataset:
    """``prompt``/``response`` -> ``input_ids`` and ``labels``: the loss covers the response and its EOS only.

    Plain text is a pair with an empty prompt. With ``chat_template`` the prompt becomes a user turn and
    the response the assistant turn, through the tokenizer's own chat template. Long examples lose the
    start of their prompt first, then the end of their response.
    """

    def encode(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"input_ids": [], "labels": []}
        for prompt, response in zip(batch["prompt"], batch["response"], strict=True):
            answer = answer_ids(tokenizer, response, max_length)
            context = prompt_ids(tokenizer, prompt, chat_template, max_length - len(answer))
            out["input_ids"].append(context + answer)
            out["labels"].append([IGNORE_INDEX] * len(context) + answer)
        return out

    return pairs.map(encode, batched=True, remove_columns=pairs.column_names)


def pack(examples: Dataset, max_length: int) -> Dataset:
    """Concatenate tokenised examples and cut them into blocks of ``max_length`` (no padding wasted)."""

    def blocks(batch: dict[str, list]) -> dict[str, list]:
        ids = [t for seq in batch["input_ids"] for t in seq]
        labels = [t for seq in batch["labels"] for t in seq]
        starts = range(0, len(ids), max_length)
        return {"input_ids": [ids[i:i + max_length] for i in starts],
                "labels": [labels[i:i + max_length] for i in starts]}

    return examples.map(blocks, batched=True, batch_size=1000, remove_columns=examples.column_names)


class CausalLMCollator:
    """Right-pads a batch; padding gets attention 0 and label ``IGNORE_INDEX`` so it never enters the loss.

    Examples without ``labels`` are labelled with their own ``input_ids``.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        length = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        for row, example in enumerate(examples):
            ids = torch.tensor(example["input_ids"], dtype=torch.long)
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
            labels[row, : len(ids)] = torch.tensor(example.get("labels", example["input_ids"]), dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class CausalLMDataModule(L.LightningDataModule):
    """Train and validation splits of one party, already tokenised.

    ``random_subsets``, a generator, makes every training batch an independent uniform random subset drawn from it
    (DP-SGD's sampling) instead of a slice of a shuffled epoch.
    """

    def __init__(self, train: Dataset | None, val: Dataset, pad_token_id: int, batch_size: int = 8) -> None:
        super().__init__()
        self.train_dataset = train
        self.val_dataset = val
        self.batch_size = batch_size
        self.collate = CausalLMCollator(pad_token_id)
        self.random_subsets: torch.Generator | None = None

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise RuntimeError("this data module holds only a held-out split")
        if self.random_subsets is not None:
            from fedlit.privacy.example_dp import RandomSubsetBatches

            batches = RandomSubsetBatches(len(self.train_dataset), self.batch_size, self.random_subsets)
            return DataLoader(self.train_dataset, batch_sampler=batches, collate_fn=self.collate)
        return DataLoader(self.train_dataset, batch_size=self.batch_size, shuffle=True, collate_fn=self.collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset, batch_size=self.batch_size, shuffle=False, collate_fn=self.collate)
