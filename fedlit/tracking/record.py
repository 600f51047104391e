"""The end of a run as loggers see it: what it wrote, its summary, its base model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class RunRecord:
    """A finished run: ``output_dir`` holds ``metrics.csv``, ``adapter/`` and (a fresh start's) ``partition.png``."""

    output_dir: Path
    summary: dict[str, float]
    base_model: str | None


@runtime_checkable
class RunLogger(Protocol):
    """A Lightning logger that also keeps a record of the whole run (media, summary, the final adapter): the
    loop calls :meth:`log_run` once, after the final adapter is saved."""

    def log_run(self, record: RunRecord) -> None: ...
