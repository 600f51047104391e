"""Server-side emulator distillation (Offsite-Tuning's "NLD" emulator): the layer-dropped middle learns to
reproduce the full middle's output on the owner's public data, so adapters tuned against it transfer."""

from __future__ import annotations

from dataclasses import dataclass, field

import lightning as L
import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedlit.data.datamodule import CausalLMCollator, pack, tokenize
from fedlit.data.sources import load_records
from fedlit.models.offsite import OffsiteConfig, adapter_indices, decoder_blocks


@dataclass
class DistillationConfig:
    """Emulator distillation on the owner's public data (off with ``steps: 0``).

    Args:
        steps: optimiser steps of the server-side Trainer.
        lr: AdamW learning rate of the emulator's middle blocks.
        source: public text, as ``data.source`` (built-in ``shakespeare``, a file, a saved dataset).
        exclude: column -> values to leave out, e.g. the clients' plays, so the public data is disjoint.
        template: how a record becomes text (``str.format`` over its columns).
        max_length: packed block length in tokens.
        batch_size: blocks per step.
    """

    steps: int = 0
    lr: float = 1e-4
    source: str = "shakespeare"
    exclude: dict[str, list[str]] = field(default_factory=dict)
    template: str = "{character}:\n{text}"
    max_length: int = 128
    batch_size: int = 8


def public_dataloader(config: DistillationConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> DataLoader:
    """Packed plain-text blocks of the public data, shuffled by ``seed``."""
    records = load_records(config.source)
    for column, values in config.exclude.items():
        if column not in records.column_names:
            raise KeyError(f"offsite distillation.exclude names column '{column}', which '{config.source}' lacks "
                           f"(columns: {records.column_names})")
        records = records.filter(lambda value, excluded=frozenset(values): value not in excluded,
                                 input_columns=column)
    pairs = Dataset.from_dict({"prompt": [""] * len(records),
                               "response": [config.template.format(**r) for r in records]})
    blocks = pack(tokenize(pairs, tokenizer, config.max_length), config.max_length)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(blocks, batch_size=config.batch_size, shuffle=True, generator=generator,
                      collate_fn=CausalLMCollator(tokenizer.pad_token_id))


class EmulatorDistillation(L.LightningModule):
    """Mean-squared error between the hidden states entering the top adapter blocks, emulator vs full model.

    Only the emulator's middle blocks train; the full model and the adapter blocks stay frozen.
    """

    def __init__(self, full: PreTrainedModel, emulator: PreTrainedModel, plan: list[int], offsite: OffsiteConfig,
                 lr: float = 1e-4) -> None:
        super().__init__()
        self.full, self.emulator, self.lr = full.requires_grad_(False), emulator, lr
        self.full_index = full.config.num_hidden_layers - offsite.back
        self.emulator_index = len(plan) - offsite.back
        _, blocks = decoder_blocks(emulator)
        adapters = set(adapter_indices(plan, offsite))
        emulator.requires_grad_(False)
        for i, block in enumerate(blocks):
            block.requires_grad_(i not in adapters)

    def on_fit_start(self) -> None:
        self.full.eval()
        self.emulator.train()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                  "output_hidden_states": True}
        with torch.no_grad():
            target = self.full(**inputs).hidden_states[self.full_index]
        got = self.emulator(**inputs).hidden_states[self.emulator_index]
        mask = batch["attention_mask"].unsqueeze(-1).to(got.dtype)
        loss = ((got.float() - target.float()) ** 2 * mask).sum() / (mask.sum() * got.shape[-1])
        self.log("distill_loss", loss, on_step=True, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in self.emulator.parameters() if p.requires_grad], lr=self.lr)
