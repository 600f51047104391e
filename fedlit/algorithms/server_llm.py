"""What the server steps of FedCoLLM and FedMKT share: the server's own LLM with its adapter, loaded where the
server step runs (never on a party), evaluated on the server's held-out split, checkpointed and exported."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedlit.data.datamodule import CausalLMDataModule
from fedlit.files import atomic_directory
from fedlit.lightning_modules import PeftModule
from fedlit.validation import validate


class ServerLLM:
    """The LLM half of a :class:`~fedlit.loop.ServerStep`; its rows use ``model: llm``."""

    def __init__(self, llm: Callable[[], PeftModule], held_out: Mapping[str, CausalLMDataModule],
                 trainer_kwargs: dict[str, Any]) -> None:
        self.llm_factory, self.held_out, self.trainer_kwargs = llm, dict(held_out), trainer_kwargs

    @functools.cached_property
    def llm(self) -> PeftModule:
        """The LLM with its adapter, built on first use."""
        return self.llm_factory()

    def evaluate(self) -> list[dict[str, Any]]:
        results = validate(self.llm, self.held_out, self.trainer_kwargs)
        return [{"client": party, "split": "val", "model": "llm", **values,
                 "num_examples": len(self.held_out[party].val_dataset)} for party, values in results.items()]

    def state_dict(self) -> dict[str, Any]:
        return {"llm_adapter": self.llm.trainable_state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.llm.load_trainable_state_dict(state["llm_adapter"], who="the checkpoint's server LLM adapter")

    def save(self, directory: Path) -> None:
        with atomic_directory(directory / "llm_adapter") as tmp:
            self.llm.save_adapter(tmp)
