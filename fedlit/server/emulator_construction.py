"""Emulator construction's last step, as a server-side Trainer callback: when emulator distillation ends,
write the client package (``save_pretrained``, atomically). The dropped blocks never reach it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedlit.files import atomic_directory
from fedlit.lightning_modules.emulator_distillation import EmulatorDistillation

MANIFEST = "fedlit_package.json"


def write_client_package(emulator: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, package_dir: Path,
                         manifest: dict[str, Any] | None = None) -> None:
    """Everything a client receives, in one directory that ``from_pretrained`` loads, plus ``manifest`` (what
    else a client needs to know of it, such as which of the full model's blocks it keeps) as JSON."""
    with atomic_directory(package_dir) as tmp:
        emulator.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / MANIFEST).write_text(json.dumps(manifest or {}))


def read_manifest(package_dir: Path) -> dict[str, Any]:
    return json.loads((Path(package_dir) / MANIFEST).read_text())


class EmulatorConstruction(Callback):
    """Writes the distilled emulator (with its adapter blocks) and the tokenizer when fit ends.

    Args:
        package_dir: the client package directory.
        tokenizer: saved alongside, so a client loads everything from this one directory.
    """

    def __init__(self, package_dir: str | Path, tokenizer: PreTrainedTokenizerBase,
                 manifest: dict[str, Any] | None = None) -> None:
        self.package_dir = Path(package_dir)
        self.tokenizer, self.manifest = tokenizer, manifest

    def on_fit_end(self, trainer: L.Trainer, pl_module: EmulatorDistillation) -> None:
        pl_module.emulator.requires_grad_(False).eval()
        write_client_package(pl_module.emulator, self.tokenizer, self.package_dir, self.manifest)
