"""A finished run's summary: the last value of every logged metric, plus totals over the run (``summary/...``).

The loop writes it to ``output_dir/summary.json`` (a sweep reads its target metric there) and hands it to the
loggers that keep a run record (:class:`~fedlit.tracking.record.RunLogger`), W&B's run summary among them.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

from fedlit.data.federated import GLOBAL
from fedlit.tracking.names import SUMMARY_PREFIX, row_metrics

FINAL_METRICS = ("loss", "perplexity", "token_accuracy", "choice_accuracy", "exact_match")


def final_evaluation(history: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The federated model's last evaluation: the global split's values, or, without one, the example-weighted
    mean over the clients evaluated last."""
    rows = [r for r in history if r["split"] == "val" and not r.get("model") and "loss" in r]
    if not rows:
        return {}
    last = [r for r in rows if r["round"] == rows[-1]["round"]]
    chosen = [r for r in last if r["client"] == GLOBAL] or last
    total = sum(r.get("num_examples", 1) for r in chosen)
    return {m: sum(r[m] * r.get("num_examples", 1) for r in chosen) / total for m in FINAL_METRICS
            if all(m in r for r in chosen)}


def exclusions(history: Sequence[dict[str, Any]]) -> dict[str, collections.Counter[str]]:
    """Client fits excluded (``fits``) and evaluations missing (``evaluations``), each by the kind of reason (what
    precedes its first colon: ``ClientTimeout``, ``WorkerDied``, ...) with its count."""
    found: dict[str, collections.Counter[str]] = {"fits": collections.Counter(), "evaluations": collections.Counter()}
    for row in history:
        if row.get("excluded") and row["split"] in ("train", "val"):
            found["fits" if row["split"] == "train" else "evaluations"][str(row["excluded"]).split(":")[0]] += 1
    return found


def run_summary(history: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The run's summary from its metric history (the rows of metrics.csv)."""
    summary: dict[str, float] = {}
    for row in history:
        summary.update(row_metrics(row))
    ran = {r["round"] for r in history if r["round"] > 0}
    skipped = {r["round"] for r in history if r["split"] == "round"}
    epsilons = {r["client"]: r["epsilon"] for r in history if "epsilon" in r}  # each party's last
    missing = exclusions(history)
    totals = {
        "rounds_trained": len(ran - skipped),
        "rounds_skipped": len(skipped),
        "clients_excluded": sum(missing["fits"].values()),
        "evaluations_missing": sum(missing["evaluations"].values()),
        "bytes_sent": sum(r.get("bytes_sent", 0) for r in history),
        "bytes_received": sum(r.get("bytes_received", 0) for r in history),
        # client-level DP's (the server's), else the largest of the clients' DP-SGD epsilons
        **({"epsilon": epsilons.get("server", max(epsilons.values()))} if epsilons else {}),
        **{f"val_{m}": v for m, v in final_evaluation(history).items()},
    }
    return {**summary, **{SUMMARY_PREFIX + k: float(v) for k, v in totals.items()}}
