"""What the server sides of FedCoLLM and FedMKT share: a strategy wrapper holding the server's own LLM with its
adapter, loaded where the strategy runs (never on a party), evaluated on the server's held-out split, checkpointed
with the strategy and exported at the end of the run."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedlit.data.datamodule import CausalLMDataModule
from fedlit.files import atomic_directory
from fedlit.lightning_modules import PeftModule
from fedlit.payload import Payload
from fedlit.strategies import Strategy
from fedlit.strategies.wrapper import StrategyWrapper
from fedlit.validation import validate


class ServerLLM(StrategyWrapper):
    """``inner`` plus the server's LLM: its rows use ``model: llm``; subclasses train it in :meth:`after_round`."""

    def __init__(self, inner: Strategy, llm: Callable[[], PeftModule], held_out: Mapping[str, CausalLMDataModule],
                 trainer_kwargs: dict[str, Any]) -> None:
        super().__init__(inner)
        self.llm_factory, self.held_out, self.trainer_kwargs = llm, dict(held_out), trainer_kwargs

    @functools.cached_property
    def llm(self) -> PeftModule:
        """The LLM with its adapter, built on first use."""
        return self.llm_factory()

    def evaluate(self) -> list[dict[str, Any]]:
        results = validate(self.llm, self.held_out, self.trainer_kwargs)
        return [*self.inner.evaluate(),
                *({"client": party, "split": "val", "model": "llm", **values,
                   "num_examples": len(self.held_out[party].val_dataset)} for party, values in results.items())]

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "llm_adapter": self.llm.trainable_state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.llm.load_trainable_state_dict(state["llm_adapter"], who="the checkpoint's server LLM adapter")

    def save(self, output_dir: Path, payload: Payload, history: list[dict[str, Any]]) -> None:
        self.inner.save(output_dir, payload, history)
        with atomic_directory(output_dir / "llm_adapter") as tmp:
            self.llm.save_adapter(tmp)
