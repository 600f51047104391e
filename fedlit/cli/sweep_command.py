"""``fedlit sweep``: a W&B sweep file run offline, every run's command line checked before any run starts."""

from __future__ import annotations

import sys
from typing import Any

from jsonargparse import ArgumentParser, Namespace

from fedlit.cli.errors import ParseError, parse_quietly
from fedlit.cli.fit_command import ALGORITHMS, fit_parser


def sweep_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Run a W&B sweep file offline: every grid point in W&B's order, or seeded "
                            "random draws; each run a fedlit process in its own output dir. Run it again to resume.")
    parser.add_argument("sweep_file", type=str, help="a W&B sweep YAML (method, metric, parameters, command)")
    parser.add_argument("--count", type=int | None, default=None,
                        help="runs to make (random: required unless run_cap; grid: the first N points)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (CPU threads are shared among them)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random draws")
    parser.add_argument("--output_dir", type=str | None, default=None, help="default: outputs/sweeps/<file name>")
    parser.add_argument("--wandb", type=bool | None, default=None,
                        help="log every run to W&B (offline unless WANDB_MODE); default: when wandb is installed")
    parser.add_argument("--accelerator", type=str | None, default=None,
                        help="every run's trainer.accelerator (cpu, gpu, auto, ...); default: each run's config")
    parser.add_argument("--devices", type=str | None, default=None,
                        help="every run's trainer.devices (1, 2, '[0]', auto, ...); default: each run's config")
    return parser


def run_sweep_command(config: Namespace) -> int:
    """Run the sweep; 0 when every run finished, 1 naming the runs that did not."""
    import importlib.util
    import signal

    from fedlit.sweep import load_sweep, run_sweep, sweep_points
    from fedlit.sweep.report import best_trial

    spec = load_sweep(config.sweep_file)
    trainer = {key: config[key] for key in ("accelerator", "devices") if config[key] is not None}
    check_sweep_runs(spec, sweep_points(spec, config.count, config.seed), trainer)
    wandb = config.wandb if config.wandb is not None else importlib.util.find_spec("wandb") is not None
    output_dir = config.output_dir or f"outputs/sweeps/{spec.name}"
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as Ctrl-C does: runs checkpoint and stop
    state = run_sweep(spec, output_dir, config.count, config.parallel, config.seed, wandb, trainer)
    best = best_trial(spec, state.trials)
    print(f"sweep: {len(state.trials)} runs in {output_dir}/sweep.csv, plot in {output_dir}/sweep.png"
          + (f"; best {best.name}: {spec.metric['name']} = {best.metric:.4f} with {best.values}" if best else ""))
    failed = [t.name for t in state.trials if t.status != "finished"]
    if failed:
        print(f"fedlit: sweep runs did not finish: {', '.join(failed)} (logs in {output_dir}/logs; run the same "
              "command again to resume them)", file=sys.stderr)
    return 1 if failed else 0


def check_sweep_runs(spec: Any, points: list[dict[str, Any]], trainer: dict[str, str] | None = None) -> None:
    """Parse each run's fedlit command line as that run would (with the sweep's ``trainer`` options), before any run
    starts: a swept key the config lacks, or a value it refuses, fails here with one line naming the run and the
    key, not in every run."""
    from fedlit.sweep import SweepError, expand_command
    from fedlit.sweep.runner import trainer_options

    parsers: dict[str, ArgumentParser] = {}
    for index, values in enumerate(points):
        line = expand_command(spec.command, spec.parameters, values, spec.program)
        found = [i for i, part in enumerate(line[:-1]) if part.endswith("fedlit") and line[i + 1] in ALGORITHMS]
        if not found:
            return  # not a fedlit command: its own program checks its arguments
        command = line[found[0] + 1]
        parser = parsers.setdefault(command, fit_parser(command))
        try:
            parse_quietly(parser, [*line[found[0] + 2:], *trainer_options(trainer)])
        except ParseError as error:
            raise SweepError(f"{spec.path}: run {index} ({values}) would fail: {error}") from None
