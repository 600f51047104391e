"""Read an offline W&B run back from its ``run-<id>.wandb`` file (W&B's record log of protobuf records), so
tests check what W&B itself stored, not what fedlit meant to send."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32768  # the log is written in 32 KiB blocks; a record's fragments never straddle one
HEADER = 7  # file header (":W&B", magic, version) and each fragment header (crc32, length, type)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[Any]:
    """Every record of the run's log, as ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run log"
    found, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if room < HEADER or (kind == 0 and length == 0):  # block padding
            pos += room
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            found.append(record)
    return found


@dataclass
class OfflineRun:
    """What an offline run holds: its config, history rows, summary, artifacts and group."""

    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Any] = field(default_factory=list)
    group: str = ""
    exit_code: int | None = None


def read_offline_run(run_dir: Path) -> OfflineRun:
    """The run in ``run_dir`` (``wandb/offline-run-*``)."""
    (log,) = Path(run_dir).glob("run-*.wandb")
    run = OfflineRun()
    for record in records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.group = record.run.run_group or run.group  # (a later run record may leave it empty)
            run.config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            run.config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            run.history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                                for i in record.history.item})
        elif kind == "summary":
            run.summary.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                                for i in record.summary.update})
        elif kind == "artifact":
            run.artifacts.append(record.artifact)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run
