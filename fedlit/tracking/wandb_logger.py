"""A Weights & Biases logger that keeps a whole run's record: config, round metrics, media, summary, adapter."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

from fedlit.tracking.record import RunRecord

ROUND_AXIS = "round"


def _cell(value: str) -> float | str | None:
    """A metrics.csv cell as W&B's table wants it: a number, text, or missing."""
    if value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return value


class WandbLogger(LightningWandbLogger):
    """Lightning's ``WandbLogger`` for federated runs.

    - Offline unless ``WANDB_MODE`` says otherwise or a W&B sweep agent started the run (``WANDB_SWEEP_ID``):
      ``wandb sync`` uploads offline runs later. Runs of one sweep share ``WANDB_RUN_GROUP``.
    - Every metric is plotted against the federated round (``round``), not a per-client trainer step.
    - At the end of the run (:meth:`log_run`): ``partition.png`` and the per-round table (metrics.csv) as media,
      the run's summary (``summary/...`` totals beside the last value of each metric), and the final adapter as
      an artifact of type ``model`` whose metadata names the base model. The run is then finished, so its
      offline directory is complete when ``fit`` returns.

    Args:
        project: W&B project (default: ``WANDB_PROJECT``, else ``fedlit``).
        save_dir: where ``wandb/`` goes (default: ``WANDB_DIR``, else the working directory).
        log_adapter: upload the final adapter as an artifact.
        **kwargs: Lightning's ``WandbLogger`` / ``wandb.init`` arguments (``name``, ``group``, ``tags``, ``mode``,
            ``save_dir``, ...).
    """

    def __init__(self, project: str | None = None, save_dir: str | None = None, log_adapter: bool = True,
                 **kwargs: Any) -> None:
        online = "WANDB_MODE" in os.environ or "WANDB_SWEEP_ID" in os.environ or kwargs.get("offline")
        if kwargs.get("mode") is None and not online:
            kwargs["mode"] = "offline"
        # read here, not left to wandb: its settings are read once per process, before a later run's environment
        for key, variable in (("group", "WANDB_RUN_GROUP"), ("name", "WANDB_NAME")):
            if kwargs.get(key) is None:
                kwargs[key] = os.environ.get(variable)
        super().__init__(project=project or os.environ.get("WANDB_PROJECT", "fedlit"),
                         save_dir=save_dir or os.environ.get("WANDB_DIR"), **kwargs)
        self.log_adapter = log_adapter
        self._round_axis = False

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log ``metrics`` at round ``step`` (W&B's x-axis for every fedlit metric)."""
        run = self.experiment
        if not self._round_axis:  # replaces Lightning's trainer/global_step axis
            run.define_metric(ROUND_AXIS)
            run.define_metric("*", step_metric=ROUND_AXIS)
            self._round_axis = True
        run.log({**metrics, **({ROUND_AXIS: step} if step is not None else {})})

    def log_run(self, record: RunRecord) -> None:
        """Media, summary and the adapter artifact of the finished run (see the class docstring)."""
        import wandb

        run = self.experiment
        media: dict[str, Any] = {}
        partition = record.output_dir / "partition.png"
        if partition.is_file():
            media["media/partition"] = wandb.Image(str(partition))
        with open(record.output_dir / "metrics.csv", newline="") as file:
            rows = list(csv.reader(file))
        media["media/rounds"] = wandb.Table(columns=rows[0], data=[[_cell(v) for v in row] for row in rows[1:]])
        run.log(media)
        run.summary.update(record.summary)
        adapter = record.output_dir / "adapter"
        if self.log_adapter and adapter.is_dir():
            artifact = wandb.Artifact(f"adapter-{run.id}", type="model",
                                      metadata={"base_model": record.base_model,
                                                "rounds_trained": record.summary.get("summary/rounds_trained")})
            artifact.add_dir(str(adapter))
            run.log_artifact(artifact, aliases=["latest", "final"])

    def finalize(self, status: str) -> None:
        """Finish the W&B run (its files complete on disk); a failed run is marked so."""
        super().finalize(status)
        if self._experiment is not None:
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None
