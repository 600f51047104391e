"""A run's record: every row the loop keeps (metrics.csv), the loggers that see each one, and the summary at the end.
"""

from __future__ import annotations

import collections
import csv
import io
import json
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger

from fedlit.files import atomic_write_bytes
from fedlit.tracking import RunLogger, RunRecord, row_metrics, run_summary

METRIC_COLUMNS = ["round", "client", "split", "model", "loss", "perplexity", "token_accuracy", "exact_match",
                  "choice_accuracy", "num_examples", "bytes_received", "bytes_sent", "seconds", "update_norm",
                  "epsilon", "excluded"]


def default_loggers(output_dir: Path) -> list[Logger]:
    """The loggers a run gets when none are configured: a CSVLogger under ``output_dir/logs``."""
    return [CSVLogger(save_dir=str(output_dir), name="logs", version="")]


class RunRecords:
    """The rows of a run: ``{"round", "client", "split", "model", <metric columns>}``; ``split`` is ``train`` or
    ``val`` for a party, ``round`` for a skipped round, or a server row's own (``privacy``: epsilon).

    Args:
        output_dir: where metrics.csv and summary.json go.
        loggers: Lightning loggers; each gets every row's numbers (step = its round).
        run_config: the run's whole configuration, given to every logger as its hyperparameters (``None``: none).
    """

    def __init__(self, output_dir: Path, loggers: list[Logger], run_config: dict[str, Any] | None = None) -> None:
        self.output_dir, self.loggers, self.run_config = Path(output_dir), loggers, run_config
        self.history: list[dict[str, Any]] = []

    def start(self) -> None:
        """Give the loggers the run's configuration."""
        for logger in self.loggers if self.run_config is not None else ():
            logger.log_hyperparams(self.run_config)

    def record(self, server_round: int, row: dict[str, Any]) -> None:
        """Keep ``row`` for metrics.csv and log it."""
        self.history.append({"round": server_round, **row})
        self._log(self.history[-1])

    def replay(self, history: list[dict[str, Any]]) -> None:
        """Take a resumed run's rows; loggers that start afresh (Lightning's CSVLogger does) get them all."""
        self.history = history
        for row in history:
            self._log(row)

    def _log(self, row: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_metrics(row_metrics(row), step=row["round"])

    def write(self) -> None:
        """metrics.csv (atomically) and every logger's files."""
        buffer = io.StringIO()
        extra = sorted({key for row in self.history for key in row} - set(METRIC_COLUMNS))  # (an algorithm's own)
        writer = csv.DictWriter(buffer, fieldnames=[*METRIC_COLUMNS, *extra], restval="")
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_bytes(self.output_dir / "metrics.csv", buffer.getvalue().encode())
        for logger in self.loggers:
            logger.save()

    def rounds_run(self) -> int:
        """Training rounds that ran (trained or skipped) so far."""
        return len({row["round"] for row in self.history if row["round"] > 0})

    def trained_rounds(self) -> list[int]:
        """Rounds that produced a new global adapter: every round that ran except the skipped ones (each a
        ``server``/``round`` row)."""
        skipped = {row["round"] for row in self.history if row["split"] == "round"}
        return sorted({row["round"] for row in self.history if row["round"] > 0} - skipped)

    def why_untrained(self, stopped: str | None) -> str:
        """Why rounds were skipped and clients excluded (and why the run ``stopped``): each distinct reason with its
        count."""
        reasons = collections.Counter(row["excluded"] for row in self.history if row.get("excluded"))
        reasons.update([stopped] if stopped else [])
        if not reasons:
            return "no round ran"
        return "; ".join(f"{reason} (x{count})" for reason, count in reasons.most_common(5))

    def finish(self, model_name: str | None) -> None:
        """``summary.json`` (:func:`~fedlit.tracking.run_summary`), also handed to the loggers that keep a whole-run
        record."""
        summary = run_summary(self.history)
        atomic_write_bytes(self.output_dir / "summary.json", json.dumps(summary, indent=1).encode())
        record = RunRecord(self.output_dir, summary, model_name)
        for logger in self.loggers:
            if isinstance(logger, RunLogger):
                logger.log_run(record)

    def finalize(self, status: str) -> None:
        for logger in self.loggers:
            logger.finalize(status)
