"""Where models run: Lightning's ``accelerator``/``devices`` wherever a Trainer runs, one ``device`` option
elsewhere (``fedlit infer``, ``fedlit verify``), and the frozen base kept on its device between Trainers."""

from __future__ import annotations

import functools
from importlib.metadata import entry_points
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.trainer.connectors import callback_connector

from fedlit.multi_device import spanning_strategy

DEVICE_HELP = "where the model runs: auto (a GPU when there is one), cpu, cuda, cuda:N or mps"


class ResidentSingleDevice(SingleDeviceStrategy):
    """Lightning's single-device strategy, except that its teardown leaves the model on the device: every client
    fit and evaluation of a process shares one frozen base, and Lightning's default (the whole module back to the
    CPU after each Trainer) copies that base both ways every time. Only adapters and batches move."""

    def teardown(self) -> None:
        module, self._lightning_module = self._lightning_module, None  # what Lightning's teardown would move
        try:
            super().teardown()
        finally:
            self._lightning_module = module


@functools.cache
def _callback_factories(group: str) -> tuple[Any, ...]:
    return tuple(entry_points(group=group))


def _external_callbacks(group: str) -> list[Any]:
    """Lightning's external callbacks (entry points of ``group``), each factory called anew for every Trainer as
    Lightning does, but the installed packages scanned for them once per process: the scan took ~13 ms of every
    Trainer, most of what fedlit added to a client fit or evaluation at small scale."""
    callbacks: list[Any] = []
    for factory in _callback_factories(group):
        made = factory.load()()
        callbacks.extend(made if isinstance(made, list) else [made])
    return callbacks


callback_connector._load_external_callbacks = _external_callbacks


@functools.cache
def _single_device(accelerator: str, devices: Any) -> torch.device | None:
    """The device Lightning puts a Trainer with these options on, ``None`` when it spans several (DDP)."""
    probe = L.Trainer(accelerator=accelerator, devices=devices, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    return probe.strategy.root_device if type(probe.strategy) is SingleDeviceStrategy else None


def _resolved_device(trainer_kwargs: dict[str, Any]) -> torch.device | None:
    """The one device Lightning puts a Trainer with these ``accelerator``/``devices`` on (``None``: several)."""
    devices = trainer_kwargs.get("devices", "auto")
    return _single_device(trainer_kwargs.get("accelerator", "auto"),
                          tuple(devices) if isinstance(devices, list) else devices)


def spans_devices(trainer_kwargs: dict[str, Any]) -> bool:
    """Whether a Trainer with these options trains on several devices, or with a multi-device strategy."""
    strategy = trainer_kwargs.get("strategy", "auto")
    if strategy == "auto":
        return _resolved_device(trainer_kwargs) is None
    return not (strategy == "single_device" or isinstance(strategy, SingleDeviceStrategy))


def build_trainer(**kwargs: Any) -> L.Trainer:
    """``lightning.Trainer(**kwargs)``; on a single device (as Lightning resolves ``accelerator``/``devices``) with
    the strategy left to Lightning, one that keeps the model on that device after it finishes; on several, or with
    a multi-device strategy by name (``ddp``, ``ddp_fork``, ...), ranks that return to this process
    (:func:`~fedlit.multi_device.spanning_strategy`): Lightning's own would run the whole command again in each."""
    strategy = kwargs.get("strategy", "auto")
    if strategy == "auto":
        device = _resolved_device(kwargs)
        strategy = ResidentSingleDevice(device=device) if device is not None else "ddp"
    if isinstance(strategy, str) and strategy != "single_device":
        strategy = spanning_strategy(strategy)
    return L.Trainer(**{**kwargs, "strategy": strategy})


def torch_device(name: str = "auto") -> torch.device:
    """The device ``name`` (:data:`DEVICE_HELP`) stands for here; a device this machine lacks is refused."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device '{name}': not a device ({DEVICE_HELP})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch has no CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"device '{name}': {why} (torch {torch.__version__}); use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device '{name}': only {torch.cuda.device_count()} GPU(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device '{name}': MPS is not available here; use cpu or auto")
    return device
