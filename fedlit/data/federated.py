"""Split records into clients (one per value of a column, e.g. one per play) and held-out sets."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from datasets import Dataset, concatenate_datasets
from transformers import PreTrainedTokenizerBase

from fedlit.data.datamodule import CausalLMDataModule, tokenize
from fedlit.data.sources import BUILTIN_SOURCE, load_records

GLOBAL = "global"


@dataclass
class DataConfig:
    """Where the text comes from and how it is split across clients.

    Args:
        source: ``shakespeare`` (built in, offline), a directory of play texts, or a local
            json/jsonl/csv/parquet/txt file.
        client_column: records are split naturally, one client per value of this column.
        clients: the values of ``client_column`` that become clients; None takes the ``num_clients`` largest.
        num_clients: used when ``clients`` is None.
        template: how a record becomes training text (``str.format`` over its columns).
        train_examples_per_client: cap on each client's training split (None: all remaining records).
        val_examples_per_client: each client's own held-out split.
        global_val_examples: server-side held-out split, drawn evenly from all clients' held-out records.
        max_length: tokens per example, EOS included.
        batch_size: for training and evaluation.
        seed: the shuffle that assigns records to splits.
    """

    source: str = BUILTIN_SOURCE
    client_column: str = "play"
    clients: list[str] | None = None
    num_clients: int = 4
    template: str = "{character}:\n{text}"
    train_examples_per_client: int | None = None
    val_examples_per_client: int = 16
    global_val_examples: int = 64
    max_length: int = 128
    batch_size: int = 8
    seed: int = 0


@dataclass
class FederatedData:
    clients: dict[str, CausalLMDataModule]
    global_val: CausalLMDataModule


def _render(records: Dataset, template: str) -> Dataset:
    try:
        template.format(**records[0])
    except KeyError as err:
        raise KeyError(f"data.template uses column {err} which the data lacks "
                       f"(columns: {records.column_names})") from None
    return records.map(lambda r: {"text": template.format(**r)}, remove_columns=records.column_names)


def _choose_clients(records: Dataset, config: DataConfig) -> list[str]:
    if config.client_column not in records.column_names:
        raise KeyError(f"data.client_column '{config.client_column}' is not a column of {config.source} "
                       f"(columns: {records.column_names})")
    values, counts = np.unique(np.asarray(records[config.client_column], dtype=str), return_counts=True)
    if config.clients is None:
        largest = sorted(zip(-counts, values, strict=True))[: config.num_clients]
        return sorted(str(v) for _, v in largest)
    unknown = sorted(set(config.clients) - set(values.tolist()))
    if unknown:
        raise KeyError(f"data.clients: no records with {config.client_column} = {unknown}")
    return list(config.clients)


def build_federated_data(config: DataConfig, tokenizer: PreTrainedTokenizerBase) -> FederatedData:
    """One data module per client plus the server's global held-out split, deterministic in ``seed``."""
    records = load_records(config.source)
    client_ids = _choose_clients(records, config)
    column = np.asarray(records[config.client_column], dtype=str)
    global_share = math.ceil(config.global_val_examples / len(client_ids))
    rng = np.random.default_rng(config.seed)
    modules, global_parts = {}, []
    for client_id in client_ids:
        rows = rng.permutation(np.flatnonzero(column == client_id))
        n_val, n_held = config.val_examples_per_client, config.val_examples_per_client + global_share
        n_train = len(rows) - n_held
        if config.train_examples_per_client is not None:
            n_train = min(n_train, config.train_examples_per_client)
        if n_train <= 0:
            raise ValueError(f"client '{client_id}' has no training records left after the held-out splits")
        tokens = tokenize(_render(records.select(rows[: n_held + n_train]), config.template),
                          tokenizer, config.max_length)
        modules[client_id] = CausalLMDataModule(
            train=tokens.select(range(n_held, n_held + n_train)),
            val=tokens.select(range(n_val)),
            pad_token_id=tokenizer.pad_token_id,
            batch_size=config.batch_size,
        )
        global_parts.append(tokens.select(range(n_val, n_held)))
    global_val = concatenate_datasets(global_parts).select(range(config.global_val_examples))
    return FederatedData(modules, CausalLMDataModule(None, global_val, tokenizer.pad_token_id, config.batch_size))
