"""Sweeps in W&B's own file format: expanded and run offline by ``fedlit sweep``, or by ``wandb agent`` online."""

from fedlit.sweep.command import expand_command, run_config
from fedlit.sweep.runner import SweepRunner, SweepState, Trial, run_sweep
from fedlit.sweep.search import grid_points, random_points, sweep_points
from fedlit.sweep.spec import Parameter, SweepError, SweepSpec, load_sweep

__all__ = ["Parameter", "SweepError", "SweepRunner", "SweepSpec", "SweepState", "Trial", "expand_command",
           "grid_points", "load_sweep", "random_points", "run_config", "run_sweep", "sweep_points"]
