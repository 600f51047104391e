"""How a history row's numbers are named for loggers: ``section/name``, the section being W&B's panel group.

Sections say whose numbers and which split: ``global_val`` (the server's held-out split), ``clients_train`` and
``clients_val`` (one name per client), ``server_<split>`` (the server's own rows), ``bytes`` (what each party
sent and received) and ``privacy`` (epsilon, per client under DP-SGD or ``server`` under client-level DP). A
row of one of the server's own models (FedCoLLM's ``llm``) gets the model as a prefix: ``llm_global_val``.
"""

from __future__ import annotations

from typing import Any

from fedlit.data.federated import GLOBAL

ROW_LABELS = ("round", "client", "split", "model", "excluded")
SUMMARY_PREFIX = "summary/"


def metric_key(row: dict[str, Any], metric: str) -> str:
    """The logged name of ``row``'s ``metric`` (e.g. ``global_val/loss``, ``clients_train/c3/loss``)."""
    party = row["client"]
    if metric.startswith("bytes_"):
        return f"bytes/{party}_{metric.removeprefix('bytes_')}"
    if metric == "epsilon":
        return f"privacy/{party}_epsilon"
    scope = party if party in (GLOBAL, "server") else "clients"
    section = "_".join(filter(None, (row.get("model"), scope, row["split"])))
    return f"{section}/{metric}" if scope != "clients" else f"{section}/{party}/{metric}"


def row_metrics(row: dict[str, Any]) -> dict[str, float]:
    """A history row's numbers under their logged names."""
    return {metric_key(row, k): float(v) for k, v in row.items() if k not in ROW_LABELS and v is not None}
