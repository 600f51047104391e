"""Run tracking: metric names loggers see, the run summary, and the W&B logger that records a whole run."""

from fedlit.tracking.names import metric_key, row_metrics
from fedlit.tracking.record import RunLogger, RunRecord
from fedlit.tracking.summary import run_summary
from fedlit.tracking.wandb_logger import WandbLogger

__all__ = ["RunLogger", "RunRecord", "WandbLogger", "metric_key", "row_metrics", "run_summary"]
