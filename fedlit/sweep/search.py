"""The runs a sweep asks for: every grid point in W&B's order, or seeded random draws from W&B's distributions."""

from __future__ import annotations

import itertools
import random
from typing import Any

from fedlit.sweep.spec import SweepError, SweepSpec


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every combination, the first parameter (by name) varying slowest, as W&B's grid search orders them."""
    values = [p.grid_values() for p in spec.parameters]
    return [dict(zip((p.name for p in spec.parameters), point, strict=True)) for point in itertools.product(*values)]


def random_points(spec: SweepSpec, count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` draws, each parameter in name order at ``ppf(u)`` with ``u`` from ``random.Random(seed)`` (as W&B
    draws, but seeded): the first n draws of a longer sweep are the draws of a shorter one."""
    rng = random.Random(seed)
    return [{p.name: p.ppf(rng.uniform(0.0, 1.0)) for p in spec.parameters} for _ in range(count)]


def sweep_points(spec: SweepSpec, count: int | None, seed: int) -> list[dict[str, Any]]:
    """The sweep's runs: the grid (its first ``count`` points when given), or ``count`` random draws."""
    count = count if count is not None else spec.run_cap
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise SweepError(f"{spec.path}: the run count (--count or run_cap) must be a whole number >= 1, got {count!r}")
    if spec.method == "grid":
        points = grid_points(spec)
        return points[:count] if count is not None else points
    if count is None:
        raise SweepError(f"{spec.path}: a random search needs --count N (or run_cap in the file): it has no end")
    return random_points(spec, count, seed)
