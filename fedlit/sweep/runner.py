"""``fedlit sweep``: a W&B sweep file run offline, each run a ``fedlit`` process in its own output directory.

The sweep directory holds ``sweep.json`` (the runs and what became of them), ``runs/<run>/`` (each run's
output_dir), ``logs/<run>.log``, ``sweep.csv`` and ``sweep.png``; with W&B installed, the runs' offline W&B
records are in ``wandb/`` (``wandb sync`` uploads them). Running the same command again resumes: a finished run
(its ``summary.json`` written) is skipped, a half-finished one continues from its last round checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedlit.files import atomic_write_bytes
from fedlit.server.run_dir import lock_output_dir, unlock_output_dir
from fedlit.sweep.agent_command import expand_command
from fedlit.sweep.report import write_report
from fedlit.sweep.search import sweep_points
from fedlit.sweep.spec import SweepError, SweepSpec
from fedlit.sweep.trial import Trial

STATE = "sweep.json"


@dataclass
class SweepState:
    """What ``sweep.json`` holds: which sweep file (by hash) and seed made these runs, and the runs."""

    sweep_file: str
    sha256: str
    seed: int
    trials: list[Trial] = field(default_factory=list)

    def save(self, directory: Path) -> None:
        atomic_write_bytes(directory / STATE, json.dumps(asdict(self), indent=1, default=str).encode())


def _plan(spec: SweepSpec, directory: Path, points: list[dict[str, Any]], seed: int) -> SweepState:
    """The sweep's runs: as ``sweep.json`` recorded them when resuming (refusing another file or seed), extended
    when ``points`` are more."""
    digest = hashlib.sha256(spec.path.read_bytes()).hexdigest()
    state = SweepState(str(spec.path), digest, seed)
    if (directory / STATE).is_file():
        old = json.loads((directory / STATE).read_text())
        if (old["sha256"], old["seed"]) != (digest, seed):
            raise SweepError(f"output_dir '{directory}' holds a sweep of another file or seed ({old['sweep_file']}, "
                             f"seed {old['seed']}): resume it with the same ones, or choose another --output_dir")
        state.trials = [Trial(**t) for t in old["trials"]]
    for index, values in enumerate(points[len(state.trials):], start=len(state.trials)):
        state.trials.append(Trial(f"run-{index:03d}", values))
    return state


def _metric(spec: SweepSpec, run_dir: Path) -> float | None:
    """The target metric from a finished run's ``summary.json`` (the names W&B's summary has)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    value = summary.get(spec.metric["name"])
    if value is None:
        print(f"fedlit sweep: {run_dir}/summary.json has no '{spec.metric['name']}' (the sweep's metric.name); it has:"
              f" {', '.join(sorted(summary))}")
    return value


def trainer_options(trainer: dict[str, str] | None) -> list[str]:
    """The sweep's Trainer placement (``accelerator``, ``devices``) as a run's command-line options."""
    return [f"--trainer.{key}={value}" for key, value in (trainer or {}).items()]


class SweepRunner:
    """Runs a sweep's pending trials, ``parallel`` at a time, each as its own process."""

    def __init__(self, spec: SweepSpec, directory: Path, parallel: int = 1, wandb: bool = False,
                 env: dict[str, str] | None = None, trainer: dict[str, str] | None = None) -> None:
        if parallel < 1:
            raise SweepError(f"--parallel must be >= 1, got {parallel}")
        self.spec, self.directory, self.parallel, self.wandb = spec, directory, parallel, wandb
        self.env = dict(os.environ if env is None else env)
        self.trainer = trainer or {}

    def command(self, trial: Trial) -> list[str]:
        """The sweep file's command for ``trial``, pointed at its own output_dir (resuming when it exists), with the
        sweep's Trainer placement (``accelerator``, ``devices``) over the run's."""
        run_dir = self.directory / "runs" / trial.name
        line = expand_command(self.spec.command, self.spec.parameters, trial.values, self.spec.program)
        return [*line, *trainer_options(self.trainer), f"--output_dir={run_dir}",
                *(["--resume=true"] if run_dir.exists() else [])]

    def trial_env(self, trial: Trial) -> dict[str, str]:
        """The run's environment: W&B offline (unless WANDB_MODE says otherwise), grouped by sweep, named by run;
        CPU threads shared among the parallel runs."""
        env = {**self.env, "WANDB_RUN_GROUP": self.spec.name, "WANDB_NAME": trial.name,
               "WANDB_DIR": str(self.directory), "WANDB_SILENT": "true"}
        env.setdefault("WANDB_PROJECT", "fedlit")
        if self.wandb:
            env["FEDLIT_WANDB"] = "1"
        if self.parallel > 1:
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.parallel)))
        return env

    def run(self, state: SweepState, on_change: Callable[[], None]) -> None:
        """Run every trial not yet finished; ``on_change`` after each one ends. SIGINT/SIGTERM stop the running
        trials (each keeps its last round checkpoint) and re-raise."""
        pending = [t for t in state.trials if t.status != "finished"]
        running: dict[str, tuple[Trial, subprocess.Popen, float]] = {}
        (self.directory / "logs").mkdir(parents=True, exist_ok=True)
        try:
            while pending or running:
                while pending and len(running) < self.parallel:
                    trial = pending.pop(0)
                    log = open(self.directory / "logs" / f"{trial.name}.log", "ab")  # noqa: SIM115 - closed by the child
                    process = subprocess.Popen(self.command(trial), env=self.trial_env(trial), stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True)
                    log.close()
                    trial.attempts += 1
                    running[trial.name] = (trial, process, time.monotonic())
                    print(f"fedlit sweep: {trial.name} started: {trial.values}")
                for name, (trial, process, started) in list(running.items()):
                    if process.poll() is None:
                        continue
                    del running[name]
                    trial.seconds += time.monotonic() - started
                    self._finish(trial, process.returncode)
                    on_change()
                time.sleep(0.2)
        except BaseException:
            for trial, process, started in running.values():
                process.send_signal(signal.SIGTERM)  # fedlit checkpoints the round and exits 143
                process.wait()
                trial.seconds += time.monotonic() - started
            on_change()
            raise

    def _finish(self, trial: Trial, returncode: int) -> None:
        run_dir = self.directory / "runs" / trial.name
        if returncode == 0 and (run_dir / "summary.json").is_file():
            trial.metric = _metric(self.spec, run_dir)
            trial.status = "finished" if trial.metric is not None else f"failed (no {self.spec.metric['name']})"
        else:
            trial.status = f"failed (exit {returncode})"
        print(f"fedlit sweep: {trial.name} {trial.status} in {trial.seconds:.0f} s, "
              f"{self.spec.metric['name']} = {trial.metric}")


def run_sweep(spec: SweepSpec, directory: str | Path, count: int | None = None, parallel: int = 1, seed: int = 0,
              wandb: bool = False, trainer: dict[str, str] | None = None) -> SweepState:
    """Run (or resume) the sweep into ``directory``; return its state (every trial's status and metric);
    ``trainer`` options (``accelerator``, ``devices``) go to every run."""
    directory = Path(directory)
    points = sweep_points(spec, count, seed)  # (a bad sweep file fails before anything is written)
    lock_output_dir(directory)
    try:
        state = _plan(spec, directory, points, seed)
        state.save(directory)

        def on_change() -> None:
            state.save(directory)
            write_report(spec, state.trials, directory)

        runner = SweepRunner(spec, directory, parallel, wandb, trainer=trainer)
        runner.run(state, on_change)
        on_change()
        return state
    finally:
        unlock_output_dir(directory)
