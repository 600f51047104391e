"""Tokenised causal-LM data for one client (or the server's held-out split) as a LightningDataModule."""

from __future__ import annotations

import lightning as L
import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


def tokenize(texts: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    """``text`` -> ``input_ids`` ending in EOS (so the model learns where a turn stops), truncated."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        ids = tokenizer(batch["text"], add_special_tokens=False, truncation=True, max_length=max_length - 1)
        return {"input_ids": [seq + [tokenizer.eos_token_id] for seq in ids["input_ids"]]}

    return texts.map(encode, batched=True, remove_columns=texts.column_names)


class CausalLMCollator:
    """Right-pads a batch; padding gets attention 0 and label ``IGNORE_INDEX`` so it never enters the loss."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        length = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        for row, example in enumerate(examples):
            ids = torch.tensor(example["input_ids"], dtype=torch.long)
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class CausalLMDataModule(L.LightningDataModule):
    """Train and validation splits of one party, already tokenised."""

    def __init__(self, train: Dataset | None, val: Dataset, pad_token_id: int, batch_size: int = 8) -> None:
        super().__init__()
        self.train_dataset = train
        self.val_dataset = val
        self.batch_size = batch_size
        self.collate = CausalLMCollator(pad_token_id)

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise RuntimeError("this data module holds only a held-out split")
        return DataLoader(self.train_dataset, batch_size=self.batch_size, shuffle=True, collate_fn=self.collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset, batch_size=self.batch_size, shuffle=False, collate_fn=self.collate)
