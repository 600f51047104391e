"""One run of a sweep, as the runner records it and the report reads it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Trial:
    """One run of the sweep: its values, and (once run) its status, seconds and target metric."""

    name: str
    values: dict[str, Any]
    status: str = "pending"  # pending | finished | failed (exit N) | failed (no <metric>): its summary lacks it
    seconds: float = 0.0
    metric: float | None = None
    attempts: int = 0
