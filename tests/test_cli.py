"""The ``fedlit`` command: config files, command-line overrides, --print_config and bad input."""

import csv
import json
from pathlib import Path

import pytest
import yaml
from conftest import write_cli_config

from fedlit.cli import main


@pytest.fixture
def config_file(tmp_path, tiny_model_dir, plays_jsonl):
    return write_cli_config(tmp_path, tiny_model_dir, plays_jsonl, output_dir=str(tmp_path / "cli-run"))


def test_fit_from_config_with_command_line_override(config_file, tmp_path):
    main(["fit", "--config", str(config_file), "--rounds", "1", "--peft.init_args.r", "2"])
    out = tmp_path / "cli-run"
    with open(out / "metrics.csv") as f:
        rounds = {row["round"] for row in csv.DictReader(f)}
    assert rounds == {"0", "1"}
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 2
    assert (out / "logs" / "metrics.csv").is_file()  # the default Lightning CSVLogger


def test_resume_flag_continues_from_checkpoint(config_file, tmp_path):
    main(["fit", "--config", str(config_file), "--rounds", "1"])
    main(["fit", "--config", str(config_file), "--rounds", "2", "--resume", "true"])
    checkpoints = sorted(p.name for p in (tmp_path / "cli-run" / "checkpoints").iterdir())
    assert checkpoints == ["round-0000.ckpt", "round-0001.ckpt", "round-0002.ckpt"]


def test_print_config_round_trips(config_file, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config_file), "--trainer.max_steps", "7", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["max_steps"] == 7
    assert printed["peft"]["init_args"]["r"] == 4
    assert printed["strategy"]["class_path"] == "fedlit.strategies.FedAvg"


def test_unknown_config_key_is_named(config_file, tmp_path, capsys):
    config = yaml.safe_load(config_file.read_text())
    config["data"]["num_clientz"] = 3
    config_file.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config_file)])
    assert "num_clientz" in capsys.readouterr().err


def test_malformed_config_is_rejected(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: [1, 2\nmodel: {")
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(bad)])
    assert done.value.code == 2 and "is not valid YAML" in capsys.readouterr().err


def test_wrong_value_type_is_named(config_file, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config_file), "--rounds", "many"])
    assert "rounds" in capsys.readouterr().err


def test_missing_data_file_fails_before_training(config_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config_file), "--data.source", "/nowhere/data.jsonl"])
    assert exit_info.value.code == 1
    assert "no such file or directory '/nowhere/data.jsonl'" in capsys.readouterr().err
    assert not (tmp_path / "cli-run" / "checkpoints").exists()


# the training configs (configs/infer.yaml, for `fedlit infer`, runs in test_private_inference.py)
CONFIGS = sorted(c for c in (Path(__file__).parent.parent / "configs").glob("*.yaml") if c.stem != "infer")


def shipped_config_args(config: Path, tmp_path: Path, tiny_model_dir: Path, plays_jsonl: Path,
                        preferences_jsonl: Path | None = None) -> list[str]:
    """The command line that runs a shipped config for one short round on the tiny model and the test plays (the
    test preference pairs for federated DPO)."""
    settings = yaml.safe_load(config.read_text())
    answer_set = settings.get("evaluation", {}).get("choices")
    extra = ["--evaluation.choices", '[" alpha", " beta", " gamma"]'] if answer_set else []
    command = command_of(settings)
    if command == "fedost":  # the tiny model has 2 blocks: adapter = the last, emulator = the first
        extra += ["--offsite.front", "0", "--offsite.back", "1"]
    if command == "fedhetero":  # the tiny model as every teacher and as the (uncut) mentee
        tiny = {"name_or_path": str(tiny_model_dir), "keep_blocks": None}
        extra += ["--teachers", json.dumps({f"client-00{i}": tiny for i in range(3)}),
                  "--mentee", json.dumps(tiny)]
    elif command == "fedmkt":  # the tiny model as LLM and every SLM; public text: the test plays but one
        tiny = {"name_or_path": str(tiny_model_dir), "keep_blocks": None}
        extra += ["--llm", json.dumps(tiny), "--slm", json.dumps(tiny), "--slms", "null",
                  "--transfer.source", str(plays_jsonl), "--transfer.exclude", '{"play": ["alpha"]}',
                  "--transfer.examples", "8", "--transfer.server_steps", "2",
                  "--transfer.template", "{character}: {text} ({play})", "--transfer.max_length", "32"]
    elif command == "fedco":  # the tiny model as LLM and (uncut) SLM; public text: the test plays but one
        tiny = {"name_or_path": str(tiny_model_dir), "keep_blocks": None}
        public = {"steps": 2, "source": str(plays_jsonl), "exclude": {"play": ["alpha"]}, "max_length": 32}
        extra += ["--llm", json.dumps(tiny), "--slm", json.dumps(tiny),
                  "--slm_init", json.dumps(public), "--server", json.dumps(public)]
    else:
        extra += ["--model.name_or_path", str(tiny_model_dir)]
    sampling, strategy = "--strategy.init_args", settings.get("strategy", {})
    while "strategy" in strategy.get("init_args", {}):  # a wrapper (SCAFFOLD): its inner strategy samples
        sampling, strategy = f"{sampling}.strategy.init_args", strategy["init_args"]["strategy"]
    source = preferences_jsonl if command == "fedpo" else plays_jsonl
    if settings.get("strategy", {}).get("class_path", "").endswith("HeteroRank"):  # the test plays' clients
        extra += ["--strategy.init_args.ranks", '{"alpha": "phone", "beta": 8, "gamma": 32}']
    return [command, "--config", str(config), *extra,
            "--data.source", str(source), "--data.keep", "null", "--data.clients", "null",
            "--data.num_clients", "3",
            "--data.train_examples_per_client", "null", "--data.val_examples_per_client", "4",
            "--data.global_val_examples", "6", "--rounds", "1", "--trainer.max_steps", "2",
            "--trainer.precision", "32-true", f"{sampling}.clients_per_round", "3",
            "--output_dir", str(tmp_path / "run"), "--progress", "false"]


def command_of(settings: dict) -> str:
    return ("fedost" if "offsite" in settings else "fedhetero" if "teachers" in settings
            else "fedmkt" if "transfer" in settings else "fedco" if "slm" in settings
            else "fedkseed" if "zeroth_order" in settings else "fedpo" if "dpo" in settings else "fit")


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_shipped_config_runs(config, tmp_path, tiny_model_dir, plays_jsonl, preferences_jsonl, monkeypatch):
    """Each config as shipped, pointed at the tiny model and data, runs one round and writes an adapter, with
    transformers' Hub kernels off and no connection attempted beyond this machine (the Hub offline)."""
    import socket

    from transformers.integrations.hub_kernels import _kernels_enabled

    settings = yaml.safe_load(config.read_text())
    answer_set = settings.get("evaluation", {}).get("choices")
    command = command_of(settings)
    attempts, connect = [], socket.socket.connect

    def local_only(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            attempts.append(address)
            raise OSError("offline")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    main(shipped_config_args(config, tmp_path, tiny_model_dir, plays_jsonl, preferences_jsonl))
    assert attempts == [] and not _kernels_enabled()
    exported = "knowledge" if command == "fedmkt" else "adapter_model"  # FedMKT's global state: the LLM's logits
    assert (tmp_path / "run" / "adapter" / f"{exported}.safetensors").is_file()
    if command == "fedost":
        assert (tmp_path / "run" / "plugged_in" / "config.json").is_file()
    if command in ("fedco", "fedmkt"):
        assert (tmp_path / "run" / "llm_adapter" / "adapter_model.safetensors").is_file()
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {row["round"] for row in rows} == {"0", "1"}
    if answer_set:
        assert all(0 <= float(r["choice_accuracy"]) <= 1 for r in rows if r["split"] == "val")


def test_client_callbacks_from_config(config_file):
    from fedlit.callbacks import FedProx
    from fedlit.cli import fit_parser

    parser = fit_parser()
    config = parser.parse_args(["--config", str(config_file), "--client_callbacks",
                                '[{"class_path": "fedlit.callbacks.FedProx", "init_args": {"mu": 0.1}}]'])
    (callback,) = parser.instantiate(config).client_callbacks
    assert isinstance(callback, FedProx) and callback.mu == 0.1
