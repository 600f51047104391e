"""The server's public (auxiliary) text: what server-side distillation trains on, disjoint from the clients'."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from fedlit.data.datamodule import CausalLMCollator, pack, tokenize
from fedlit.data.federated import check_template
from fedlit.data.sources import load_records


@dataclass
class PublicDataConfig:
    """Public text as packed blocks of plain text.

    Args:
        source: as ``data.source`` (built-in ``shakespeare``, a file, a saved dataset).
        exclude: column -> values to leave out, e.g. the clients' plays, so the public data is disjoint.
        template: how a record becomes text (``str.format`` over its columns).
        max_length: packed block length in tokens.
        batch_size: blocks per step.
    """

    source: str = "shakespeare"
    exclude: dict[str, list[str]] = field(default_factory=dict)
    template: str = "{character}:\n{text}"
    max_length: int = 128
    batch_size: int = 8


def public_texts(config: PublicDataConfig, key: str = "public.template") -> list[str]:
    """The public records minus ``exclude``, each written out by ``template`` (config key ``key``, named in
    errors)."""
    records = load_records(config.source)
    for column, values in config.exclude.items():
        if column not in records.column_names:
            raise KeyError(f"public data: exclude names column '{column}', which '{config.source}' lacks "
                           f"(columns: {records.column_names})")
        records = records.filter(lambda value, excluded=frozenset(values): value not in excluded,
                                 input_columns=column)
    check_template(key, config.template, records.column_names)
    return [config.template.format(**r) for r in records]


def public_blocks(config: PublicDataConfig, tokenizer: PreTrainedTokenizerBase) -> Dataset:
    """:func:`public_texts`, tokenized and packed into ``max_length`` blocks."""
    texts = public_texts(config)
    pairs = Dataset.from_dict({"prompt": [""] * len(texts), "response": texts})
    return pack(tokenize(pairs, tokenizer, config.max_length), config.max_length)


def public_dataloader(blocks: Dataset, config: PublicDataConfig, pad_token_id: int, seed: int) -> DataLoader:
    """``blocks`` in batches of ``config.batch_size``, shuffled by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(blocks, batch_size=config.batch_size, shuffle=True, generator=generator,
                      collate_fn=CausalLMCollator(pad_token_id))
