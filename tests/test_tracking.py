"""Run tracking: metric names, the run summary, and a W&B offline run read back from its own files."""

from __future__ import annotations

import csv
import json

import pytest

from fedlit.cli import main
from fedlit.tracking import metric_key, run_summary
from tests.conftest import write_cli_config

HISTORY = [
    {"round": 0, "client": "global", "split": "val", "loss": 3.0, "choice_accuracy": 0.25, "num_examples": 8},
    {"round": 1, "client": "a", "split": "train", "loss": 2.5, "bytes_sent": 100, "bytes_received": 90},
    {"round": 1, "client": "b", "split": "train", "bytes_sent": 0, "bytes_received": 90, "excluded": "timeout"},
    {"round": 1, "client": "server", "split": "privacy", "epsilon": 0.5},
    {"round": 1, "client": "global", "split": "val", "loss": 2.0, "choice_accuracy": 0.5, "num_examples": 8},
    {"round": 2, "client": "server", "split": "round", "excluded": "round skipped: too few"},
    {"round": 2, "client": "server", "split": "privacy", "epsilon": 0.7},
    {"round": 2, "client": "a", "split": "val", "loss": 1.0, "num_examples": 2},
    {"round": 2, "client": "b", "split": "val", "loss": 4.0, "num_examples": 6},
]


def test_metric_names_group_by_whose_and_which_split():
    assert metric_key({"client": "global", "split": "val"}, "loss") == "global_val/loss"
    assert metric_key({"client": "c3", "split": "train"}, "loss") == "clients_train/c3/loss"
    assert metric_key({"client": "c3", "split": "train"}, "bytes_sent") == "bytes/c3_sent"
    assert metric_key({"client": "server", "split": "privacy"}, "epsilon") == "privacy/server_epsilon"
    assert metric_key({"client": "global", "split": "val", "model": "llm"}, "loss") == "llm_global_val/loss"


def test_run_summary_totals_and_final_values():
    summary = run_summary(HISTORY)
    assert summary["summary/rounds_trained"] == 1 and summary["summary/rounds_skipped"] == 1
    assert summary["summary/clients_excluded"] == 1
    assert summary["summary/bytes_sent"] == 100 and summary["summary/bytes_received"] == 180
    assert summary["summary/epsilon"] == 0.7
    # the last evaluation (round 2) has no global row: the example-weighted mean of the clients evaluated
    assert summary["summary/val_loss"] == pytest.approx((1.0 * 2 + 4.0 * 6) / 8)
    assert "summary/val_choice_accuracy" not in summary  # not every client reported it
    assert summary["global_val/loss"] == 2.0 and summary["global_val/choice_accuracy"] == 0.5  # last values


def test_wandb_offline_run_holds_config_metrics_summary_media_and_adapter(tmp_path, tiny_model_dir, plays_jsonl,
                                                                          monkeypatch):
    pytest.importorskip("wandb")
    from tests.wandb_records import read_offline_run

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_RUN_GROUP", "sweep-x")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = write_cli_config(tmp_path, tiny_model_dir, plays_jsonl, loggers=[{
        "class_path": "fedlit.tracking.WandbLogger",
        "init_args": {"project": "fedlit-test", "save_dir": str(tmp_path / "wb")}}])
    main(["fit", "--config", str(config)])

    (run_dir,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")  # offline by default
    run = read_offline_run(run_dir)
    assert run.group == "sweep-x" and run.exit_code == 0
    # the full merged config, defaults included
    assert run.config["rounds"] == 2 and run.config["model"]["name_or_path"] == str(tiny_model_dir)
    assert run.config["peft"]["init_args"]["r"] == 4 and "lora_dropout" in run.config["peft"]["init_args"]
    # every round's metrics, with the round as the step
    rows = [r for r in run.history if "global_val/loss" in r]
    assert [r["round"] for r in rows] == [0, 1, 2]
    with open(tmp_path / "run" / "metrics.csv") as file:
        all_rows = list(csv.DictReader(file))
    csv_rows = [r for r in all_rows if r["client"] == "global"]
    assert [r["global_val/loss"] for r in rows] == pytest.approx([float(r["loss"]) for r in csv_rows])
    assert any(any(k.startswith("clients_train/") for k in r) for r in run.history)
    assert any(any(k.startswith("bytes/") for k in r) for r in run.history)
    # media: the partition heat-map and the per-round table
    (media,) = [r for r in run.history if "media/rounds/_type" in r]
    assert media["media/partition/_type"] == "image-file"
    assert (run_dir / "files" / media["media/partition/path"]).is_file()
    assert media["media/rounds/_type"] == "table-file" and media["media/rounds/nrows"] == len(all_rows)
    # summary: totals beside the last values, the same as summary.json
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert run.summary["summary/rounds_trained"] == on_disk["summary/rounds_trained"] == 2
    assert run.summary["summary/val_loss"] == pytest.approx(on_disk["summary/val_loss"])
    assert on_disk["summary/val_loss"] == pytest.approx(float(csv_rows[-1]["loss"]))
    assert run.summary["summary/bytes_sent"] > 0
    # the final adapter as a model artifact naming its base model
    (artifact,) = [a for a in run.artifacts if a.type == "model"]
    assert json.loads(artifact.metadata)["base_model"] == str(tiny_model_dir)
    stored = {entry.path for entry in artifact.manifest.contents}
    assert stored == {p.name for p in (tmp_path / "run" / "adapter").iterdir()}


@pytest.mark.parametrize(("env", "mode"), [({}, "offline"), ({"WANDB_MODE": "online"}, None),
                                           ({"WANDB_SWEEP_ID": "abc"}, None)])
def test_wandb_logger_is_offline_unless_told_otherwise(monkeypatch, env, mode):
    pytest.importorskip("wandb")
    from fedlit.tracking import WandbLogger

    for name in ("WANDB_MODE", "WANDB_SWEEP_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert WandbLogger()._wandb_init.get("mode") == mode  # None: wandb.init reads WANDB_MODE / the agent's run


@pytest.mark.parametrize("variable", ["FEDLIT_WANDB", "WANDB_SWEEP_ID"])
def test_sweep_runs_get_a_wandb_logger_beside_their_own(monkeypatch, tmp_path, variable):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import CSVLogger

    from fedlit.cli import with_sweep_logger
    from fedlit.federation import Federation
    from fedlit.tracking import WandbLogger

    federation = Federation(output_dir=str(tmp_path))
    for name in ("FEDLIT_WANDB", "WANDB_SWEEP_ID"):
        monkeypatch.delenv(name, raising=False)
    assert with_sweep_logger(federation) is None  # not in a sweep: the configured loggers (default: CSV)
    monkeypatch.setenv(variable, "1")
    default_csv, wandb = with_sweep_logger(federation)
    assert isinstance(default_csv, CSVLogger) and isinstance(wandb, WandbLogger)
    own = WandbLogger(project="mine")
    assert with_sweep_logger(federation.replace(loggers=[own])) == [own]  # one W&B logger, not two


def test_output_dir_names_environment_variables(monkeypatch):
    from jsonargparse import Namespace

    from fedlit.cli import expand_output_dir

    monkeypatch.delenv("FEDLIT_TEST_RUN", raising=False)
    with pytest.raises(ValueError, match="names an environment variable that is not set"):
        expand_output_dir(Namespace(output_dir="outputs/$FEDLIT_TEST_RUN"))
    monkeypatch.setenv("FEDLIT_TEST_RUN", "abc")
    config = Namespace(output_dir="outputs/sweep/$FEDLIT_TEST_RUN")
    expand_output_dir(config)
    assert config.output_dir == "outputs/sweep/abc"
