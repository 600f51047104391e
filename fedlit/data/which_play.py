"""A preference set made from the offline Shakespeare corpus: "Which play is this line from?" over four plays, the
right play chosen and another of the four rejected: built-in source ``shakespeare-which-play`` (for DPO), the same
question and split as configs/task_which_play.yaml."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from datasets import Dataset

from fedlit.data.shakespeare import load_shakespeare, prepare_shakespeare, shakespeare_dir
from fedlit.files import atomic_write_bytes

WHICH_PLAY_SOURCE = "shakespeare-which-play"
PLAYS = ("hamlet", "macbeth", "romeo_and_juliet", "tempest")
QUESTION = "Which play is this line from: hamlet, macbeth, romeo_and_juliet or tempest?\n{character}: {text}\nPlay:"


def which_play_preferences(turns: Dataset) -> Dataset:
    """The four plays' turns with ``prompt`` (the question), ``chosen`` (`` <the play>``) and ``rejected`` (`` <one
    of the three others>``, drawn per record by a fixed generator: a dataset, not a protection)."""
    turns = turns.filter(lambda play: play in PLAYS, input_columns="play")
    shifts = np.random.default_rng(0).integers(1, len(PLAYS), size=len(turns))

    def pair(record: dict, index: int) -> dict[str, str]:
        wrong = PLAYS[(PLAYS.index(record["play"]) + int(shifts[index])) % len(PLAYS)]
        return {"prompt": QUESTION.format(**record), "chosen": f" {record['play']}", "rejected": f" {wrong}"}

    return turns.map(pair, with_indices=True)


def which_play_preferences_file() -> Path:
    """The preference set as parquet (columns play, character, text, prompt, chosen, rejected), written once."""
    path = shakespeare_dir() / "which-play-preferences-v1.parquet"
    if not path.is_file():
        buffer = io.BytesIO()
        which_play_preferences(load_shakespeare(prepare_shakespeare())).to_parquet(buffer)
        atomic_write_bytes(path, buffer.getvalue())
    return path
