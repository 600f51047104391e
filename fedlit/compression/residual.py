"""A client's error-feedback residual between rounds, kept where the client runs (never sent anywhere).

One safetensors file per round the client fitted, in its own directory under the run's id. A fit of round r
reads the newest residual of an earlier round, so a round that is run again after a crash (resume) reads what
the uninterrupted run read, and a residual written by the crashed attempt is simply replaced.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save

from fedlit.io import atomic_write_bytes

log = logging.getLogger(__name__)
_NAME = re.compile(r"^residual-(\d+)\.safetensors$")


def client_state_dir(root: Path, run_id: str, client_id: str) -> Path:
    """``root/<run_id>/<client id made path-safe>-<its hash>``: any client id, no collisions."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", client_id)[:40]
    return Path(root) / run_id / f"{safe}-{hashlib.sha256(client_id.encode()).hexdigest()[:8]}"


class ResidualStore:
    """The residuals of one client of one run, in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _rounds(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(m[1]) for p in self.directory.iterdir() if (m := _NAME.match(p.name)))

    def _path(self, server_round: int) -> Path:
        return self.directory / f"residual-{server_round:04d}.safetensors"

    def load(self, server_round: int, length: int) -> np.ndarray:
        """The newest residual from before ``server_round`` (zeros when the client has none: its first fit); one
        of another length (another adapter) is refused."""
        earlier = [r for r in self._rounds() if r < server_round]
        if not earlier:
            return np.zeros(length)
        residual = load_file(self._path(earlier[-1]))["residual"].astype(np.float64)
        if residual.shape != (length,):
            raise ValueError(f"error-feedback residual {self._path(earlier[-1])} holds {residual.size} values, the "
                             f"adapter has {length}: the client's state belongs to another setup")
        return residual

    def save(self, server_round: int, residual: np.ndarray) -> None:
        """Keep ``residual`` for the client's next fit; drop residuals older than the one this round read (a
        re-run of this round still finds that one)."""
        earlier = [r for r in self._rounds() if r < server_round]
        atomic_write_bytes(self._path(server_round), save({"residual": residual.astype(np.float32)}))
        for old in earlier[:-1]:
            self._path(old).unlink(missing_ok=True)
