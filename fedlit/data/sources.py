"""Load records from the built-in Shakespeare sources or a local file through ``datasets``."""

from __future__ import annotations

import io
from pathlib import Path

from datasets import Dataset, load_dataset, load_from_disk

from fedlit.data.shakespeare import load_shakespeare, prepare_shakespeare, shakespeare_dir
from fedlit.data.which_play import WHICH_PLAY_SOURCE, which_play_preferences_file
from fedlit.files import atomic_write_bytes

BUILTIN_SOURCE = "shakespeare"
_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def shakespeare_turns_file() -> Path:
    """The parsed corpus as parquet, written once: a file-backed dataset lets ``datasets`` cache tokenisation."""
    path = shakespeare_dir() / "turns-v2.parquet"  # v2: act headings are no speakers
    if not path.is_file():
        buffer = io.BytesIO()
        load_shakespeare(prepare_shakespeare()).to_parquet(buffer)
        atomic_write_bytes(path, buffer.getvalue())
    return path


BUILTIN_FILES = {BUILTIN_SOURCE: shakespeare_turns_file, WHICH_PLAY_SOURCE: which_play_preferences_file}


def load_records(source: str) -> Dataset:
    """``shakespeare`` (speaking turns) or ``shakespeare-which-play`` (preference pairs); a directory
    (``save_to_disk`` output, else play texts); a json/jsonl/csv/parquet/txt
    file; or a ``datasets`` hub name (its ``train`` split), which offline must already be in the cache."""
    if source in BUILTIN_FILES:
        source = str(BUILTIN_FILES[source]())
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            return load_from_disk(str(path))
        return load_shakespeare(path)
    if path.is_file():
        builder = _BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"data.source: unsupported file type '{path.suffix}' of '{source}' "
                             f"(supported: {', '.join(sorted(_BUILDERS))})")
        if path.stat().st_size == 0:
            raise ValueError(f"data.source '{source}' is an empty file")
        records = load_dataset(builder, data_files=str(path), split="train")
        if len(records) == 0:
            raise ValueError(f"data.source '{source}' holds no records")
        return records
    if source.startswith((".", "/", "~")) or path.suffix.lower() in _BUILDERS:
        raise FileNotFoundError(f"data.source: no such file or directory '{source}'")
    try:
        return load_dataset(source, split="train")
    except Exception as err:  # datasets raises several types for "not found" and "offline"
        raise FileNotFoundError(
            f"data.source: '{source}' is not a local file or directory, and loading it as a hub dataset "
            f"failed ({type(err).__name__}: {err}). Offline, use a local file."
        ) from err
