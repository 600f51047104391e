"""Split records into clients (one per value of a column, e.g. one per play) and held-out sets."""

from __future__ import annotations

import collections
import logging
import math
import re
import string
import zlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from datasets import Dataset, concatenate_datasets
from transformers import PreTrainedTokenizerBase

from fedlit.data import partition
from fedlit.data.datamodule import CausalLMDataModule, pack, tokenize
from fedlit.data.sources import BUILTIN_SOURCE, load_records

GLOBAL = "global"
log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Where the text comes from and how it is split across clients.

    Args:
        source: ``shakespeare`` (built in, offline), a directory of play texts, or a local
            json/jsonl/csv/parquet/txt file.
        keep: only records whose column values are listed, e.g. ``{play: [hamlet, macbeth]}``.
        partition: ``natural`` (one client per value of ``client_column``), ``iid``, ``dirichlet``,
            ``shards`` or ``quantity_skew`` (see :mod:`fedlit.data.partition`).
        client_column: the column of the natural split, or several: ``[play, character]`` makes one client per
            role of a play (LEAF's Shakespeare split), named ``hamlet:HAMLET``.
        clients: natural split only: the values of ``client_column`` that become clients; None takes the
            ``num_clients`` largest.
        num_clients: how many clients (natural split, when ``clients`` is None: the largest; ``None``: all).
        min_examples_per_client: natural split: clients with fewer records are dropped, with a printed count.
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
        optional_columns: template columns that may be empty or null (rendered as ""), e.g. alpaca's ``input``.
        empty_records: records whose other template columns are empty or null: ``drop`` them (a count per client is
            printed) or ``error``.
    """

    source: str = BUILTIN_SOURCE
    keep: dict[str, list[str]] | None = None
    partition: Literal["natural", "iid", "dirichlet", "shards", "quantity_skew"] = "natural"
    client_column: str | list[str] = "play"
    clients: list[str] | None = None
    num_clients: int | None = 4
    min_examples_per_client: int = 1
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
    optional_columns: list[str] = field(default_factory=list)
    empty_records: Literal["drop", "error"] = "drop"

    def __post_init__(self) -> None:
        checks = {"max_length": (self.max_length, 2), "batch_size": (self.batch_size, 1),
                  "num_clients": (self.num_clients, 1), "val_examples_per_client": (self.val_examples_per_client, 1),
                  "global_val_examples": (self.global_val_examples, 1),
                  "train_examples_per_client": (self.train_examples_per_client, 1),
                  "min_examples_per_client": (self.min_examples_per_client, 1)}
        for key, (value, least) in checks.items():
            if value is not None and value < least:
                raise ValueError(f"data.{key} must be >= {least}, got {value}")
        if self.num_clients is None and self.partition != "natural":
            raise ValueError(f"data.num_clients: the {self.partition} partition needs a number of clients")
        if self.clients is not None:
            if not self.clients:
                raise ValueError("data.clients is empty: list the clients, or null to take the num_clients largest")
            repeated = sorted({c for c in self.clients if self.clients.count(c) > 1})
            if repeated:
                raise ValueError(f"data.clients lists {repeated} more than once")

    def templates(self) -> dict[str, tuple[str, str]]:
        """Each field of an example -> (config key, template): ``prompt``/``response`` (plain text is an empty
        prompt)."""
        if self.prompt_template is None:
            return {"prompt": ("template", ""), "response": ("template", self.template)}
        return {"prompt": ("prompt_template", self.prompt_template),
                "response": ("response_template", self.response_template)}

    def examples(self, fields: Dataset, tokenizer: PreTrainedTokenizerBase) -> Dataset:
        """Rendered fields -> token ids and labels (the loss covers the response and its EOS)."""
        return tokenize(fields, tokenizer, self.max_length, self.chat_template)

    def data_module(self, train: Dataset | None, val: Dataset, pad_token_id: int) -> CausalLMDataModule:
        """One party's splits as a data module (training examples packed if asked)."""
        train = pack(train, self.max_length) if self.packing and train is not None else train
        return CausalLMDataModule(train, val, pad_token_id, self.batch_size)


@dataclass
class PartyData:
    """A client's data as a server that never sees it knows it (a deployment): the sizes of its splits, each
    standing in as a range of that length where the loop counts records."""

    train_size: int
    val_size: int

    @property
    def train_dataset(self) -> range:
        return range(self.train_size)

    @property
    def val_dataset(self) -> range:
        return range(self.val_size)


@dataclass
class FederatedData:
    clients: dict[str, CausalLMDataModule | PartyData]
    global_val: CausalLMDataModule | None
    label_names: list[str]
    label_counts: np.ndarray  # [client, label]: records each client holds, before the held-out splits

    @property
    def held_by_parties(self) -> bool:
        """Whether the clients' data (and what else is theirs to name, such as their teachers) stays with the
        parties of a deployment, the server knowing only sizes."""
        return any(isinstance(data, PartyData) for data in self.clients.values())


def template_columns(config: DataConfig, columns: list[str]) -> set[str]:
    """The columns the templates read; a positional field (``{}``), a malformed template or a column the data
    lacks is an error naming the key."""
    return set().union(*(check_template(f"data.{key}", template, columns)
                         for key, template in config.templates().values()))


def check_template(key: str, template: str, columns: list[str]) -> set[str]:
    """The columns ``template`` (config key ``key``) reads; a positional field (``{}``), a malformed template or a
    column the records lack is an error naming the key."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as err:
        raise ValueError(f"{key} {template!r} is not a valid template: {err}") from None
    if any(field == "" or field.isdigit() for field in fields):
        raise ValueError(f"{key} {template!r} has a positional field such as {{}}: name a column instead, e.g. "
                         f"{{text}} (columns: {columns})")
    names = {re.split(r"[.\[]", field)[0] for field in fields}
    missing = sorted(names - set(columns))
    if missing:
        raise KeyError(f"{key} uses column {missing[0]!r} which the data lacks (columns: {columns})")
    return names


def _render(records: Dataset, config: DataConfig) -> Dataset:
    """Records -> the example's fields (``prompt``/``response``, or the config's own); an optional column's null is
    the empty string."""
    templates = {name: template for name, (_, template) in config.templates().items()}
    optional = set(config.optional_columns)
    return records.map(lambda r: {k: t.format(**{c: "" if c in optional and v is None else v for c, v in r.items()})
                                  for k, t in templates.items()}, remove_columns=records.column_names)


def _is_empty(value: object) -> bool:
    return value is None or not str(value).strip()


def drop_empty_records(records: Dataset, config: DataConfig) -> Dataset:
    """Records whose template columns are all filled: the others are dropped with a count per client, or refused
    (``empty_records: error``); a null never becomes the text "None"."""
    columns = sorted(template_columns(config, records.column_names) - set(config.optional_columns))
    values = [records[c] for c in columns]
    empty = [i for i in range(len(records)) if any(_is_empty(column[i]) for column in values)]
    if not empty:
        return records
    if config.empty_records == "error":
        first = empty[0]
        field = next(c for c, column in zip(columns, values, strict=True) if _is_empty(column[first]))
        more = f" (and {len(empty) - 1} more records)" if len(empty) > 1 else ""
        raise ValueError(f"data: {config.source} row {first + 1} has no '{field}' (empty or null){more}; fix it, or "
                         "set data.empty_records: drop")
    owners = client_keys(records, config) if set(_names(config.client_column)) <= set(records.column_names) else None
    counts = collections.Counter(str(owners[i]) if owners is not None else "all" for i in empty)
    detail = ", ".join(f"{client}: {n}" for client, n in sorted(counts.items()))
    log.warning("data: dropped %d records of %s with an empty or null %s (%s)", len(empty), config.source,
                '/'.join(columns), detail)
    keep = sorted(set(range(len(records))) - set(empty))
    return records.select(keep)


def _column_name(records: Dataset, name: str, key: str, source: str) -> str:
    if name not in records.column_names:
        raise KeyError(f"data.{key} '{name}' is not a column of {source} (columns: {records.column_names})")
    return name


def _names(columns: str | list[str]) -> list[str]:
    return [columns] if isinstance(columns, str) else list(columns)


def _column(records: Dataset, name: str | list[str], key: str, source: str) -> np.ndarray:
    """A column's values as strings; several columns' values joined by ':' (``hamlet:HAMLET``)."""
    values = [records[_column_name(records, n, key, source)] for n in _names(name)]
    return np.asarray([":".join(map(str, row)) for row in zip(*values, strict=True)], dtype=str)


def client_keys(records: Dataset, config: DataConfig) -> np.ndarray:
    """Each record's natural-split client id (the value of ``client_column``, or its columns' joined)."""
    return _column(records, config.client_column, "client_column", config.source)


def _natural_clients(records: Dataset, config: DataConfig) -> dict[str, np.ndarray]:
    parts = partition.natural(client_keys(records, config))
    small = [c for c in parts if len(parts[c]) < config.min_examples_per_client]
    if small and config.clients is None:
        log.warning("data: dropped %d of %d clients with fewer than %d records (min_examples_per_client)",
                    len(small), len(parts), config.min_examples_per_client)
        parts = {c: rows for c, rows in parts.items() if len(rows) >= config.min_examples_per_client}
    if config.clients is None:
        if config.num_clients is None:
            return parts
        if config.num_clients > len(parts):
            raise ValueError(f"data.num_clients is {config.num_clients} but {config.source} has only {len(parts)} "
                             f"values of {config.client_column}: {sorted(parts)[:10]}")
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
    records = drop_empty_records(load_records(config.source), config)  # (before `keep`: rows as in the file)
    for column, allowed in (config.keep or {}).items():
        values = set(map(str, allowed))
        records = records.filter(lambda value, allowed: str(value) in allowed, fn_kwargs={"allowed": values},
                                 input_columns=_column_name(records, column, "keep", config.source))
        if len(records) == 0:
            raise ValueError(f"data.keep: no records with {column} in {sorted(values)}")
    parts = assign_clients(records, config)
    global_share = math.ceil(config.global_val_examples / len(parts))
    modules, global_parts = {}, []
    for client_id, client_rows in parts.items():
        # seeded per client: a party that holds only its own records (a deployment) splits them the same way
        rows = np.random.default_rng([config.seed, zlib.crc32(client_id.encode())]).permutation(client_rows)
        n_val, n_held = config.val_examples_per_client, config.val_examples_per_client + global_share
        n_train = len(rows) - n_held
        if config.train_examples_per_client is not None:
            n_train = min(n_train, config.train_examples_per_client)
        if n_train <= 0:
            raise ValueError(f"client '{client_id}' has no training records left after the held-out splits")
        tokens = config.examples(_render(records.select(rows[: n_held + n_train]), config), tokenizer)
        modules[client_id] = config.data_module(tokens.select(range(n_held, n_held + n_train)),
                                                tokens.select(range(n_val)), tokenizer.pad_token_id)
        global_parts.append(tokens.select(range(n_val, n_held)))
    global_val = concatenate_datasets(global_parts).select(range(config.global_val_examples))
    label_name = config.label_column or config.client_column
    if set(_names(label_name)) <= set(records.column_names):
        names, counts = partition.label_histogram(parts, _column(records, label_name, "label_column", config.source))
    else:  # unlabelled data: the histogram is just each client's size
        names, counts = ["records"], np.array([[len(rows)] for rows in parts.values()])
    return FederatedData(
        clients=modules,
        global_val=config.data_module(None, global_val, tokenizer.pad_token_id),
        label_names=names,
        label_counts=counts,
    )
