"""Every command takes the device (Lightning's accelerator/devices where a Trainer runs, ``device`` elsewhere), and
the frozen base stays on its device between Trainers. Tests that need CUDA are skipped without it."""

import json
import traceback
from pathlib import Path

import lightning
import pytest
import torch

from fedlit.cli import main
from fedlit.devices import ResidentSingleDevice, build_trainer, torch_device
from fedlit.sweep.runner import SweepRunner

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
QUIET = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}


def module_and_data(make_loop):
    """A client's LightningModule (LoRA on the tiny model) and its data."""
    loop = make_loop()
    return loop.module_factory(), next(iter(loop.clients.values())).datamodule


def test_a_trainer_on_one_device_leaves_the_model_there_where_lightning_moves_it_to_the_cpu(make_loop, monkeypatch):
    moved = []
    module, data = module_and_data(make_loop)
    monkeypatch.setattr(module, "cpu", lambda: moved.append("cpu") or module)
    trainer = build_trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, **QUIET)
    assert isinstance(trainer.strategy, ResidentSingleDevice)
    trainer.fit(module, datamodule=data)
    assert moved == [] and trainer.state.finished
    lightning.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, **QUIET).fit(module, datamodule=data)
    assert moved == ["cpu"]  # (the control: Lightning's own teardown)


def test_several_devices_keep_lightning_s_strategy():
    trainer = build_trainer(accelerator="cpu", devices=2, strategy="auto", **QUIET)
    assert not isinstance(trainer.strategy, ResidentSingleDevice)


@pytest.mark.parametrize("devices", [2, "2"])  # (a list of GPU ids keeps its first: GPUs only)
def test_the_servers_own_passes_stay_on_one_device_of_a_multi_device_client(devices):
    """A client that trains on several devices: the server's evaluation is one pass in this process, on the first
    (a multi-device Trainer there would launch processes that re-run the command)."""
    from fedlit.validation import server_trainer

    trainer = server_trainer({"accelerator": "cpu", "devices": devices, "strategy": "ddp", "precision": "32-true"})
    assert trainer.num_devices == 1 and isinstance(trainer.strategy, ResidentSingleDevice)


def test_a_device_this_machine_lacks_is_refused_by_name():
    assert torch_device("cpu") == torch.device("cpu")
    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else
                                         "mps" if torch.backends.mps.is_available() else "cpu")
    with pytest.raises(ValueError, match="device 'gpu0': not a device"):
        torch_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda': (this torch has no CUDA|no GPU is visible)"):
            torch_device("cuda")


@pytest.mark.parametrize("command", ["fedost", pytest.param("fedco", marks=pytest.mark.long),
                                     pytest.param("fedmkt", marks=pytest.mark.long)])
def test_the_accelerator_reaches_every_trainer_of_a_command_server_side_steps_too(command, tmp_path, tiny_model_dir,
                                                                                  plays_jsonl, monkeypatch):
    """Every Trainer a run builds (client fits and evaluations, the server's distillation and evaluation, FedOST's
    emulator distillation and plug-in evaluation) gets the run's ``trainer.accelerator``."""
    from test_cli import shipped_config_args

    built: list[tuple[set[str], str | None]] = []  # per Trainer: the fedlit functions that asked for it, accelerator

    class Recording(lightning.Trainer):
        def __init__(self, *args, **kwargs):
            callers = {f"{Path(frame.filename).stem}.{frame.name}" for frame in traceback.extract_stack()
                       if f"{Path('fedlit')}/" in frame.filename and "/tests/" not in frame.filename}
            built.append((callers, kwargs.get("accelerator")))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(lightning, "Trainer", Recording)
    args = shipped_config_args(Path(__file__).parent.parent / "configs" / f"{command}.yaml", tmp_path, tiny_model_dir,
                               plays_jsonl)
    if command == "fedost":  # the emulator distilled on the server first
        args += ["--distillation", json.dumps({"steps": 2, "source": str(plays_jsonl), "max_length": 32,
                                               "exclude": {"play": ["alpha"]}})]
    main([*args, "--trainer.accelerator", "cpu"])
    server_side = {"fedost": "fed_ost.client_package", "fedco": "fed_co_llm.distil", "fedmkt": "fed_mkt._distil"}
    for step in ("member.fit", "app.evaluate", "validation.validate", server_side[command]):
        assert any(step in callers for callers, _ in built), (step, built)
    assert {accelerator for _, accelerator in built} == {"cpu"}, built


def test_verify_and_infer_take_the_device(tmp_path, tiny_model_dir, capsys):
    from test_bad_input import fails

    answers = tmp_path / "answers.jsonl"
    main_args = ["infer", "--server.model", str(tiny_model_dir), "--prompt", "To be", "--max_new_tokens", "2",
                 "--no_private", "--output", str(answers)]
    with pytest.raises(SystemExit) as exited:
        main([*main_args, "--server.device", "cpu"])
    assert exited.value.code == 0 and answers.is_file()
    if not torch.cuda.is_available():
        line = fails(capsys, *main_args[:-1], str(tmp_path / "other.jsonl"), "--server.device", "cuda")
        assert "device 'cuda'" in line, line
        line = fails(capsys, "verify", "--model", str(tiny_model_dir), "--key", "[missing.json]", "--device", "cuda")
        assert "missing.json" in line  # keys are read first; the device below
    assert "device 'cuda:7'" in fails(capsys, "verify", "--model", str(tiny_model_dir), "--key", f"[{_key(tmp_path)}]",
                                      "--device", "cuda:7") or torch.cuda.device_count() > 7


def _key(tmp_path: Path) -> Path:
    from fedlit.watermark.key import KEY_FORMAT

    path = tmp_path / "key.json"
    path.write_text(json.dumps({"format": KEY_FORMAT, "owner": "a", "base_model": "m", "fingerprint": "f",
                                "signature": [{"parameter": "model.norm.weight", "shape": [32], "indices": [0, 5],
                                               "signs": [1, -1]}]}))
    return path


def test_a_sweep_passes_its_placement_to_every_run(tmp_path):
    from test_sweep import write_sweep

    from fedlit.sweep.runner import Trial

    spec = write_sweep(tmp_path, {"method": "grid", "metric": {"name": "m"},
                                  "parameters": {"rounds": {"values": [1]}}})
    runner = SweepRunner(spec, tmp_path / "out", trainer={"accelerator": "gpu", "devices": "1"})
    line = runner.command(Trial("run-000", {"rounds": 1}))
    assert line[-3:] == ["--trainer.accelerator=gpu", "--trainer.devices=1",
                         f"--output_dir={tmp_path / 'out' / 'runs' / 'run-000'}"]


@needs_cuda
def test_on_a_gpu_the_frozen_base_stays_there_across_fits_and_evaluations(make_loop):
    module, data = module_and_data(make_loop)
    for _ in range(2):
        build_trainer(accelerator="gpu", devices=1, max_steps=1, limit_val_batches=0, **QUIET).fit(module,
                                                                                                 datamodule=data)
        assert all(p.device.type == "cuda" for p in module.parameters())
        build_trainer(accelerator="gpu", devices=1, **QUIET).validate(module, datamodule=data, verbose=False)
        assert all(p.device.type == "cuda" for p in module.parameters())
