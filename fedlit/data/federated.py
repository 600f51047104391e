"""Split records into clients (one per value of a column, e.g. one per play) and held-out sets."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from datasets import Dataset, concatenate_datasets
from transformers import PreTrainedTokenizerBase

from fedlit.data import partition
from fedlit.data.datamodule import CausalLMDataModule, pack, tokenize
from fedlit.data.sources import BUILTIN_SOURCE, load_records

GLOBAL = "global"


@dataclass
class DataConfig:
    """Where the text comes from and how it is split across clients.

    Args:
        source: ``shakespeare`` (built in, offline), a directory of play texts, or a local
            json/jsonl/csv/parquet/txt file.
        keep: only records whose column values are listed, e.g. ``{play: [hamlet, macbeth]}``.
        partition: ``natural`` (one client per value of ``client_column``), ``iid``, ``dirichlet``,
            ``shards`` or ``quantity_skew`` (see :mod:`fedlit.data.partition`).
        client_column: the column of the natural split.
        clients: natural split only: the values of ``client_column`` that become clients; None takes the
            ``num_clients`` largest.
        num_clients: how many clients (natural split: when ``clients`` is None).
        label_column: the label for ``dirichlet`` and ``shards`` and for the per-client label histogram
            (default: ``client_column``).
        alpha: Dirichlet concentration for ``dirichlet`` (label skew) and ``quantity_skew`` (size skew).
        shards_per_client: for ``shards``.
        template: plain-text format: how a record becomes training text (``str.format`` over its columns);
            the loss covers all of it.
        prompt_template: instruction format: when set, the record's prompt; the loss then covers only the
            response (``response_template``) and its EOS.
        response_template: instruction format: the response.
        chat_template: instruction format: wrap prompt and response as a user and an assistant turn with
            the tokenizer's chat template.
        packing: concatenate training examples into full ``max_length`` blocks (evaluation stays unpacked).
        train_examples_per_client: cap on each client's training split (None: all remaining records).
        val_examples_per_client: each client's own held-out split.
        global_val_examples: server-side held-out split, drawn evenly from all clients' held-out records.
        max_length: tokens per example, EOS included.
        batch_size: for training and evaluation.
        seed: the shuffle that assigns records to splits.
    """

    source: str = BUILTIN_SOURCE
    keep: dict[str, list[str]] | None = None
    partition: Literal["natural", "iid", "dirichlet", "shards", "quantity_skew"] = "natural"
    client_column: str = "play"
    clients: list[str] | None = None
    num_clients: int = 4
    label_column: str | None = None
    alpha: float = 0.5
    shards_per_client: int = 2
    template: str = "{character}:\n{text}"
    prompt_template: str | None = None
    response_template: str = "{response}"
    chat_template: bool = False
    packing: bool = False
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
    label_names: list[str]
    label_counts: np.ndarray  # [client, label]: records each client holds, before the held-out splits


def _render(records: Dataset, config: DataConfig) -> Dataset:
    """Records -> ``prompt``/``response`` pairs (plain text: an empty prompt)."""
    if config.prompt_template is None:
        templates = {"prompt": "", "response": config.template}
    else:
        templates = {"prompt": config.prompt_template, "response": config.response_template}
    for key, template in templates.items():
        try:
            template.format(**records[0])
        except KeyError as err:
            name = "template" if config.prompt_template is None else f"{key}_template"
            raise KeyError(f"data.{name} uses column {err} which the data lacks "
                           f"(columns: {records.column_names})") from None
    return records.map(lambda r: {k: t.format(**r) for k, t in templates.items()},
                       remove_columns=records.column_names)


def _column_name(records: Dataset, name: str, key: str, source: str) -> str:
    if name not in records.column_names:
        raise KeyError(f"data.{key} '{name}' is not a column of {source} (columns: {records.column_names})")
    return name


def _column(records: Dataset, name: str, key: str, source: str) -> np.ndarray:
    return np.asarray(records[_column_name(records, name, key, source)], dtype=str)


def _natural_clients(records: Dataset, config: DataConfig) -> dict[str, np.ndarray]:
    parts = partition.natural(_column(records, config.client_column, "client_column", config.source))
    if config.clients is None:
        largest = sorted(parts, key=lambda c: (-len(parts[c]), c))[: config.num_clients]
        return {c: parts[c] for c in sorted(largest)}
    unknown = sorted(set(config.clients) - set(parts))
    if unknown:
        raise KeyError(f"data.clients: no records with {config.client_column} = {unknown}")
    return {c: parts[c] for c in config.clients}


def assign_clients(records: Dataset, config: DataConfig) -> dict[str, np.ndarray]:
    """Client id -> indices of its records, by ``config.partition``."""
    if config.partition == "natural":
        return _natural_clients(records, config)
    # skewed splits must still leave every client its held-out records and at least one to train on
    min_size = config.val_examples_per_client + math.ceil(config.global_val_examples / config.num_clients) + 1
    if config.partition == "iid":
        return partition.iid(len(records), config.num_clients, config.seed)
    if config.partition == "quantity_skew":
        return partition.quantity_skew(len(records), config.num_clients, config.alpha, config.seed, min_size)
    labels = _column(records, config.label_column or config.client_column, "label_column", config.source)
    if config.partition == "dirichlet":
        return partition.dirichlet(labels, config.num_clients, config.alpha, config.seed, min_size)
    if config.partition == "shards":
        return partition.shards(labels, config.num_clients, config.shards_per_client, config.seed)
    raise ValueError(f"data.partition: unknown partitioner '{config.partition}' (use one of {partition.PARTITIONERS})")


def build_federated_data(config: DataConfig, tokenizer: PreTrainedTokenizerBase) -> FederatedData:
    """One data module per client plus the server's global held-out split, deterministic in ``seed``."""
    records = load_records(config.source)
    for column, allowed in (config.keep or {}).items():
        values = set(map(str, allowed))
        records = records.filter(lambda value, allowed: str(value) in allowed, fn_kwargs={"allowed": values},
                                 input_columns=_column_name(records, column, "keep", config.source))
        if len(records) == 0:
            raise ValueError(f"data.keep: no records with {column} in {sorted(values)}")
    parts = assign_clients(records, config)
    global_share = math.ceil(config.global_val_examples / len(parts))
    rng = np.random.default_rng(config.seed)
    modules, global_parts = {}, []
    for client_id, client_rows in parts.items():
        rows = rng.permutation(client_rows)
        n_val, n_held = config.val_examples_per_client, config.val_examples_per_client + global_share
        n_train = len(rows) - n_held
        if config.train_examples_per_client is not None:
            n_train = min(n_train, config.train_examples_per_client)
        if n_train <= 0:
            raise ValueError(f"client '{client_id}' has no training records left after the held-out splits")
        tokens = tokenize(_render(records.select(rows[: n_held + n_train]), config),
                          tokenizer, config.max_length, config.chat_template)
        train = tokens.select(range(n_held, n_held + n_train))
        modules[client_id] = CausalLMDataModule(
            train=pack(train, config.max_length) if config.packing else train,
            val=tokens.select(range(n_val)),
            pad_token_id=tokenizer.pad_token_id,
            batch_size=config.batch_size,
        )
        global_parts.append(tokens.select(range(n_val, n_held)))
    global_val = concatenate_datasets(global_parts).select(range(config.global_val_examples))
    label_name = config.label_column or config.client_column
    if label_name in records.column_names:
        names, counts = partition.label_histogram(parts, records[label_name])
    else:  # unlabelled data: the histogram is just each client's size
        names, counts = ["records"], np.array([[len(rows)] for rows in parts.values()])
    return FederatedData(
        clients=modules,
        global_val=CausalLMDataModule(None, global_val, tokenizer.pad_token_id, config.batch_size),
        label_names=names,
        label_counts=counts,
    )
