"""Sweeps in W&B's own file format: expanded and run offline by ``fedlit sweep``, or by ``wandb agent`` online."""

from fedlit.sweep.agent_command import agent_config, expand_command
from fedlit.sweep.runner import SweepRunner, SweepState, run_sweep
from fedlit.sweep.search import grid_points, random_points, sweep_points
from fedlit.sweep.spec import Parameter, SweepError, SweepSpec, load_sweep
from fedlit.sweep.trial import Trial

__all__ = ["Parameter", "SweepError", "SweepRunner", "SweepSpec", "SweepState", "Trial", "agent_config",
           "expand_command", "grid_points", "load_sweep", "random_points", "run_sweep", "sweep_points"]
