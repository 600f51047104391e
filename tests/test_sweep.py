"""Sweeps in W&B's format: grid order and random draws as W&B defines them, command expansion the CLI takes,
and a real offline sweep that resumes without redoing finished runs."""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest
import yaml

from fedlit.sweep import SweepError, expand_command, grid_points, load_sweep, random_points, run_sweep, sweep_points
from tests.conftest import write_cli_config

NESTED = {
    "method": "grid",
    "metric": {"name": "summary/val_loss", "goal": "minimize"},
    "parameters": {
        "strategy": {"parameters": {"init_args": {"parameters": {
            "tau": {"value": 0.001},
            "server_lr": {"values": [0.1, 0.01]},
        }}}},
        "optimizer.lr": {"values": [0.001, 0.003]},
        "peft.init_args.r": {"min": 2, "max": 3},  # two ints: int_uniform, the grid takes 2 and 3
    },
    "command": ["${env}", "${interpreter}", "-m", "fedlit", "fit", "${args}"],
}


def write_sweep(tmp_path, spec: dict, name: str = "sweep.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return load_sweep(path)


def test_grid_expands_in_wandb_order_with_nested_init_args_keys(tmp_path):
    spec = write_sweep(tmp_path, NESTED)
    # W&B: parameters sorted by key at each level; the product's first parameter varies slowest; constants ride along
    assert [p.name for p in spec.parameters] == ["optimizer.lr", "peft.init_args.r", "strategy.init_args.server_lr",
                                                 "strategy.init_args.tau"]
    expected = [(lr, r, server_lr) for lr in (0.001, 0.003) for r in (2, 3) for server_lr in (0.1, 0.01)]
    points = grid_points(spec)
    assert [(p["optimizer.lr"], p["peft.init_args.r"], p["strategy.init_args.server_lr"]) for p in points] == expected
    assert all(p["strategy.init_args.tau"] == 0.001 for p in points)
    assert sweep_points(spec, 3, seed=0) == points[:3]


def test_command_expands_as_wandb_agent_and_the_cli_takes_it(tmp_path):
    from fedlit.cli import build_parser

    spec = write_sweep(tmp_path, NESTED)
    point = grid_points(spec)[5]
    line = expand_command(spec.command, spec.parameters, point, spec.program)
    # W&B's ${args}: --key=value per top-level key of the run config; a nested block is one dict-valued key
    assert line[1:4] == [line[1], "-m", "fedlit"] and line[0] == "/usr/bin/env"
    assert line[5:] == ["--optimizer.lr=0.003", "--peft.init_args.r=2",
                        "--strategy={'init_args': {'server_lr': 0.01, 'tau': 0.001}}"]
    config = build_parser().parse_args(["fit", "--strategy=fedlit.strategies.FedAdam", *line[5:]]).fit
    assert config.optimizer.lr == 0.003 and config.peft.init_args.r == 2
    assert config.strategy.class_path == "fedlit.strategies.FedAdam"
    assert (config.strategy.init_args.server_lr, config.strategy.init_args.tau) == (0.01, 0.001)


def test_random_draws_are_reproducible_and_follow_wandb_distributions(tmp_path):
    spec = write_sweep(tmp_path, {
        "method": "random", "metric": {"name": "m"},
        "parameters": {
            "lr": {"distribution": "log_uniform_values", "min": 1.0e-4, "max": 1.0e-1},
            "steps": {"min": 1, "max": 4},
            "q": {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25},
            "opt": {"values": ["a", "b"], "probabilities": [0.8, 0.2]},
            "exp": {"distribution": "log_uniform", "min": 0.0, "max": 1.0},
        }})
    draws = random_points(spec, 4000, seed=7)
    assert draws == random_points(spec, 4000, seed=7)
    assert draws[:10] == random_points(spec, 10, seed=7)  # a longer sweep extends a shorter one
    assert draws[:10] != random_points(spec, 10, seed=8)
    logs = [math.log10(d["lr"]) for d in draws]
    assert min(logs) >= -4 and max(logs) <= -1 and statistics.mean(logs) == pytest.approx(-2.5, abs=0.05)
    assert sorted({d["steps"] for d in draws}) == [1, 2, 3, 4]
    assert {d["q"] for d in draws} <= {0.0, 0.25, 0.5, 0.75, 1.0}
    assert sum(d["opt"] == "a" for d in draws) / len(draws) == pytest.approx(0.8, abs=0.03)
    assert all(1.0 <= d["exp"] <= math.e for d in draws)  # log_uniform: min/max are exponents


@pytest.mark.parametrize(("change", "message"), [
    ({"method": "bayes"}, "method must be grid or random"),
    ({"parameters": {"lr": {"min": "1e-4", "max": 0.1}}}, "parameters.lr.min: '1e-4' is not a number"),
    ({"parameters": {"lr": {"distribution": "beta"}}}, "distribution 'beta' is not supported offline"),
    ({"parameters": {"lr": {"distribution": "uniform", "min": 0.1, "max": 0.2}}}, "a grid search takes only"),
    ({"metric": {"name": "m", "goal": "up"}}, "metric needs a name and a goal"),
    ({"early_terminate": {"type": "hyperband", "min_iter": 3}}, "early_terminate .W&B's hyperband. is not run offline"),
    ({"paramters": {"lr": {"value": 1}}}, "unknown key.s. paramters"),
    ({"run_cap": 0}, r"the run count \(--count or run_cap\) must be a whole number >= 1, got 0"),
])
def test_bad_sweep_files_are_named(tmp_path, change, message):
    spec = {**NESTED, **change}
    with pytest.raises(SweepError, match=message):
        sweep_points(write_sweep(tmp_path, spec), None, 0)


@pytest.mark.parametrize("count", [0, -1])
def test_a_count_below_one_is_refused_not_sliced(tmp_path, count):
    with pytest.raises(SweepError, match=f"must be a whole number >= 1, got {count}"):
        sweep_points(write_sweep(tmp_path, NESTED), count, 0)


def test_a_run_whose_summary_lacks_the_metric_is_failed_not_finished(tmp_path):
    from fedlit.sweep import SweepRunner, Trial

    spec = write_sweep(tmp_path, NESTED)
    run_dir = tmp_path / "out" / "runs" / "run-000"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"summary/val_los": 1.0}))
    trial = Trial("run-000", {})
    SweepRunner(spec, tmp_path / "out")._finish(trial, 0)
    assert trial.status == "failed (no summary/val_loss)" and trial.metric is None


def test_interrupted_sweep_resumes_without_redoing_finished_runs(tmp_path, tiny_model_dir, plays_jsonl):
    config = write_cli_config(tmp_path, tiny_model_dir, plays_jsonl, loggers=[])
    spec = write_sweep(tmp_path, {
        "method": "grid", "metric": {"name": "global_val/loss", "goal": "minimize"},
        "parameters": {"optimizer.lr": {"values": [0.001, 0.01]}},
        "command": ["${interpreter}", "-m", "fedlit", "fit", "--config", str(config), "--progress=false", "${args}"]})
    out = tmp_path / "sweep"
    state = run_sweep(spec, out, parallel=2, wandb=False)
    assert [t.status for t in state.trials] == ["finished", "finished"]

    # as if interrupted during run-001's last round: its round-2 checkpoint and final outputs are gone
    second = out / "runs" / "run-001"
    for name in ("summary.json", "checkpoints/round-0002.ckpt"):
        (second / name).unlink()
    saved = json.loads((out / "sweep.json").read_text())
    saved["trials"][1]["status"] = "failed (exit 143)"
    (out / "sweep.json").write_text(json.dumps(saved))
    kept = [out / "runs/run-000/metrics.csv", second / "checkpoints/round-0001.ckpt"]
    untouched = {p: p.stat().st_mtime_ns for p in kept}

    state = run_sweep(spec, out, wandb=False)
    assert [t.status for t in state.trials] == ["finished", "finished"]
    assert [t.attempts for t in state.trials] == [1, 2]
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched  # run-000 not redone; run-001 from round 1
    assert (second / "checkpoints/round-0002.ckpt").is_file()
    with open(out / "sweep.csv") as file:
        rows = list(csv.DictReader(file))
    assert [r["optimizer.lr"] for r in rows] == ["0.001", "0.01"]
    for row in rows:
        summary = json.loads((out / "runs" / row["run"] / "summary.json").read_text())
        assert float(row["global_val/loss"]) == pytest.approx(summary["global_val/loss"])
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SweepError, match="another file or seed"):
        run_sweep(spec, out, seed=1, wandb=False)


def test_ctrl_c_stops_the_running_runs_and_keeps_the_sweep_state(tmp_path):
    import os
    import signal
    import threading
    import time

    from fedlit.sweep import SweepRunner
    from fedlit.sweep.runner import _plan

    spec = write_sweep(tmp_path, {
        "method": "grid", "metric": {"name": "m"}, "parameters": {"x": {"values": [1, 2, 3]}},
        "command": ["${interpreter}", "-c", "import time; time.sleep(40)", "${args}"]})
    state = _plan(spec, tmp_path / "sweep", grid_points(spec), 0)
    saved = []
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # (whatever an earlier test installed)
    threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            SweepRunner(spec, tmp_path / "sweep", parallel=2).run(state, lambda: saved.append(1))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - started < 30  # the two running runs were stopped, not waited for
    assert [t.attempts for t in state.trials] == [1, 1, 0] and saved
    assert all(t.status == "pending" and t.seconds > 1 for t in state.trials[:2])
