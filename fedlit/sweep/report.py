"""A sweep's results: ``sweep.csv`` (one row per run) and ``sweep.png`` (the target metric against each swept
parameter, the best run marked)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedlit.files import atomic_write_bytes
from fedlit.sweep.spec import SweepSpec
from fedlit.sweep.trial import Trial


def best_trial(spec: SweepSpec, trials: Sequence[Trial]) -> Trial | None:
    """The finished run with the best target metric (per the sweep's goal)."""
    scored = [t for t in trials if t.metric is not None and math.isfinite(t.metric)]
    if not scored:
        return None
    pick = max if spec.metric["goal"] == "maximize" else min
    return pick(scored, key=lambda t: t.metric)


def write_report(spec: SweepSpec, trials: Sequence[Trial], directory: Path) -> None:
    """``sweep.csv`` and ``sweep.png`` in ``directory`` (both atomically)."""
    names = [p.name for p in spec.parameters]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["run", "status", *names, spec.metric["name"], "seconds", "output_dir"])
    for t in trials:
        writer.writerow([t.name, t.status, *(t.values[n] for n in names), "" if t.metric is None else t.metric,
                         f"{t.seconds:.1f}", directory / "runs" / t.name])
    atomic_write_bytes(directory / "sweep.csv", buffer.getvalue().encode())
    atomic_write_bytes(directory / "sweep.png", _plot(spec, trials))


def _plot(spec: SweepSpec, trials: Sequence[Trial]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    searched = spec.searched or list(spec.parameters)
    figure, axes = plt.subplots(1, len(searched), figsize=(max(5.0, 4.0 * len(searched)), 3.6), squeeze=False)
    done = [t for t in trials if t.metric is not None]
    best = best_trial(spec, trials)
    for axis, parameter in zip(axes[0], searched, strict=True):
        xs: list[Any] = [t.values[parameter.name] for t in done]
        if not all(isinstance(x, (int, float)) for x in xs):  # categories: positions in the listed order
            order = [str(v) for v in parameter.config.get("values", sorted({str(x) for x in xs}))]
            axis.set_xticks(range(len(order)), order, rotation=30)
            xs = [order.index(str(x)) for x in xs]
        else:
            if "log" in parameter.kind or (xs and min(xs) > 0 and max(xs) >= 10 * min(xs)):
                axis.set_xscale("log")
                axis.xaxis.set_minor_formatter(NullFormatter())  # decade labels only
            if parameter.kind == "categorical" and xs:
                axis.set_xticks(sorted(set(xs)), [f"{x:g}" for x in sorted(set(xs))])  # the listed values themselves
        axis.scatter(xs, [t.metric for t in done], color="tab:blue")
        if best is not None:
            bx = xs[done.index(best)]
            axis.scatter([bx], [best.metric], color="tab:red", marker="*", s=160, label=f"best ({best.name})")
            axis.legend(fontsize=8)
        axis.set_xlabel(parameter.name, fontsize=8)
        axis.set_ylabel(spec.metric["name"], fontsize=8)
    figure.suptitle(f"{spec.name}: {spec.metric['name']} ({spec.metric['goal']})", fontsize=9)
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    plt.close(figure)
    return png.getvalue()
