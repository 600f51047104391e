"""Validation on held-out splits with a quiet Trainer: the server's (the global split, its own models) and each
client's (on its own machine, wherever it runs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L

from fedlit.data.datamodule import CausalLMDataModule
from fedlit.devices import build_trainer

# Only these Trainer options carry over to the server's Trainers: where and in what precision the model runs.
_EVAL_TRAINER_KEYS = ("accelerator", "devices", "precision")
# Quiet, no checkpoints or loggers of its own (the loop records and checkpoints rounds).
QUIET_TRAINER: dict[str, Any] = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
          "enable_model_summary": False, "num_sanity_val_steps": 0}


def server_trainer(trainer_kwargs: dict[str, Any], **overrides: Any) -> L.Trainer:
    """A quiet Trainer for the server's own work, on the accelerator and in the precision of the clients'
    ``trainer_kwargs``, on one device: of a client that trains on several (``devices: 2``, ``auto`` on a machine
    with several GPUs, a list), the first (each pass is one pass in this process, on every held-out example)."""
    placement = {key: trainer_kwargs[key] for key in _EVAL_TRAINER_KEYS if key in trainer_kwargs}
    devices = placement.get("devices", "auto")
    placement["devices"] = [devices[0]] if isinstance(devices, list | tuple) else 1
    return build_trainer(**{**QUIET_TRAINER, **placement, **overrides})


def validate(module: L.LightningModule, parties: Mapping[str, CausalLMDataModule],
             trainer_kwargs: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per party, the module's validation metrics on its held-out split (names without ``val_``), with one
    :func:`server_trainer`."""
    trainer = server_trainer(trainer_kwargs)
    results = {}
    for party, datamodule in parties.items():
        (metrics,) = trainer.validate(module, dataloaders=datamodule.val_dataloader(), verbose=False)
        results[party] = {name.removeprefix("val_"): value for name, value in metrics.items()}
    return results
