"""Round checkpoints that load without running code and that notice damage.

A checkpoint file is a header line (a magic word and the SHA-256 of the rest) followed by ``torch.save``
bytes of plain data only: tensors, numbers, strings, lists, tuples and dicts. Loading checks the digest,
then unpickles with ``weights_only=True``, which refuses anything that would import or call code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedlit.files import atomic_write_bytes

log = logging.getLogger(__name__)

MAGIC = b"FEDLIT-CHECKPOINT-1"
_NAME = re.compile(r"^round-(\d+)\.ckpt$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: damaged, truncated, empty, or not a fedlit checkpoint."""


class UnsafeCheckpoint(CheckpointError):
    """A checkpoint whose contents would run code when loaded: refused, never loaded."""


def checkpoint_path(directory: Path, server_round: int) -> Path:
    """``round-NNNN.ckpt`` (more digits past round 9999; :func:`list_checkpoints` sorts by number, not name)."""
    return Path(directory) / f"round-{server_round:04d}.ckpt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(round, path) of every round checkpoint in ``directory``, oldest round first."""
    found = [(int(m[1]), p) for p in Path(directory).glob("round-*.ckpt") if (m := _NAME.match(p.name))]
    return sorted(found)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` (plain data and tensors only) atomically, with its digest."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    body = buffer.getvalue()
    atomic_write_bytes(path, MAGIC + b" " + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; raise :class:`CheckpointError` naming the file when
    it is damaged, :class:`UnsafeCheckpoint` when it asks to run code."""
    data = Path(path).read_bytes()
    header, _, body = data.partition(b"\n")
    magic, _, digest = header.partition(b" ")
    if magic != MAGIC:
        what = "is empty" if not data else "is not a fedlit checkpoint (no fedlit header)"
        raise CheckpointError(f"checkpoint {path} {what}")
    if hashlib.sha256(body).hexdigest().encode() != digest:
        raise CheckpointError(f"checkpoint {path} is damaged (truncated or altered: its SHA-256 does not match)")
    try:
        state = torch.load(io.BytesIO(body), weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises several types; all mean "refused"
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            raise UnsafeCheckpoint(f"checkpoint {path} was refused: it holds objects that would run code when "
                                   "loaded; fedlit never writes such files, so delete it unless you trust it") from None
        raise CheckpointError(f"checkpoint {path} cannot be read: {type(error).__name__}: {error}") from None
    if not isinstance(state, dict) or "round" not in state:
        raise CheckpointError(f"checkpoint {path} holds no round state")
    return state


def newest_valid_checkpoint(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads, skipping damaged newer ones with a warning; ``None`` when there is none.
    A checkpoint that would run code stops the search: it is an attack or a mistake, not damage."""
    for _, path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path)
        except UnsafeCheckpoint:
            raise
        except CheckpointError as error:
            log.warning("%s; falling back to the round before", error)
    return None


def rng_state() -> dict[str, Any]:
    """torch's, numpy's and Python's global RNG states, as plain data."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready data with a stable order: dataclasses and peft configs by their fields."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.asdict(value)
        fields.pop("base_model_name_or_path", None)  # peft fills it in when it wraps the model: the model part says it
        return {"type": type(value).__name__, **_plain(fields)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def config_fingerprint(parts: dict[str, Any]) -> dict[str, str]:
    """Per named part of a run's setup (model, data, peft, ...), a SHA-256 of its settings: a checkpoint records
    them, and a resume with different ones is refused, naming the part."""
    return {name: hashlib.sha256(json.dumps(_plain(value), sort_keys=True).encode()).hexdigest()[:16]
            for name, value in parts.items()}


class RoundCheckpoints:
    """A run's round checkpoints in ``directory``, each stamped with the run's setup ``fingerprint`` (see
    :func:`config_fingerprint`) and the global RNG states, so that a resume continues bit-identically."""

    def __init__(self, directory: Path, fingerprint: dict[str, str]) -> None:
        self.directory, self.fingerprint = Path(directory), fingerprint

    def save(self, server_round: int, state: dict[str, Any]) -> None:
        """Round ``server_round``'s ``state`` (plain data and tensors), atomically."""
        save_checkpoint({**state, "round": server_round, "fingerprint": self.fingerprint, "rng": rng_state()},
                        checkpoint_path(self.directory, server_round))

    def newest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest valid checkpoint (damaged newer ones skipped with a warning), or ``None`` when there is none;
        :class:`CheckpointError` when there are some and none can be read."""
        found = newest_valid_checkpoint(self.directory)
        if found is None:
            if list_checkpoints(self.directory):
                raise CheckpointError(f"resume: no checkpoint in {self.directory} can be read (see the warnings)")
            log.warning("resume: no checkpoint in %s, starting from round 0", self.directory)
        return found

    def restore(self, path: Path, state: dict[str, Any]) -> dict[str, Any]:
        """Refuse a checkpoint written with another setup (naming the parts that differ); else set the global RNG
        states from it and return ``state``."""
        changed = sorted(part for part in set(self.fingerprint) | set(state["fingerprint"])
                         if self.fingerprint.get(part) != state["fingerprint"].get(part))
        if changed:
            raise CheckpointError(f"resume: checkpoint {path} was written with a different {', '.join(changed)} "
                                  "setup than this run's; resume with the same settings, or start a new run in "
                                  "another output_dir")
        set_rng_state(state["rng"])
        log.info("resumed from %s", path)
        return state
