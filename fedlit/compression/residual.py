"""A client's error-feedback residual between rounds, kept where the client runs (a :class:`RoundStore`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedlit.client.round_store import RoundStore


class ResidualStore:
    """The residuals of one client of one run, in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.store = RoundStore(directory, "residual")
        self.directory = self.store.directory

    def load(self, server_round: int, length: int) -> np.ndarray:
        """The newest residual from before ``server_round`` (zeros when the client has none: its first fit); one
        of another length (another adapter) is refused."""
        found = self.store.load(before=server_round)
        if found is None:
            return np.zeros(length)
        residual = found["residual"].numpy().astype(np.float64)
        if residual.shape != (length,):
            raise ValueError(f"error-feedback residual {self.store.path(self.store.newest(server_round))} holds "
                             f"{residual.size} values, the adapter has {length}: the client's state belongs to "
                             "another setup")
        return residual

    def save(self, server_round: int, residual: np.ndarray) -> None:
        """Keep ``residual`` for the client's next fit (see :meth:`RoundStore.save`)."""
        self.store.save(server_round, {"residual": torch.from_numpy(residual.astype(np.float32))})
