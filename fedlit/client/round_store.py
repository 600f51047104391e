"""Tensors a client keeps between its fits, where it runs (never sent anywhere): one safetensors file per round.

A fit of round r reads the newest file of an earlier round, so a round that is run again after a crash (resume)
reads what the uninterrupted run read, and a file written by the crashed attempt is simply replaced.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from fedlit.files import atomic_write_bytes


def client_state_dir(root: Path, run_id: str, client_id: str) -> Path:
    """``root/<run_id>/<client id made path-safe>-<its hash>``: any client id, no collisions."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", client_id)[:40]
    return Path(root) / run_id / f"{safe}-{hashlib.sha256(client_id.encode()).hexdigest()[:8]}"


class RoundStore:
    """``<name>-<round>.safetensors`` files of one client in ``directory``."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory, self.name = Path(directory), name
        self._pattern = re.compile(rf"^{re.escape(name)}-(\d+)\.safetensors$")

    def rounds(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(m[1]) for p in self.directory.iterdir() if (m := self._pattern.match(p.name)))

    def path(self, server_round: int) -> Path:
        return self.directory / f"{self.name}-{server_round:04d}.safetensors"

    def newest(self, before: int | None = None) -> int | None:
        """The newest stored round (earlier than ``before`` when given), or ``None``."""
        rounds = [r for r in self.rounds() if before is None or r < before]
        return rounds[-1] if rounds else None

    def load(self, before: int | None = None) -> dict[str, torch.Tensor] | None:
        """The tensors of :meth:`newest` (read without running code), or ``None`` when there are none."""
        found = self.newest(before)
        return None if found is None else load_file(self.path(found))

    def save(self, server_round: int, tensors: dict[str, torch.Tensor]) -> None:
        """Keep ``tensors`` as round ``server_round``'s (atomically); drop rounds older than the one this round read
        (a re-run of this round still finds that one)."""
        earlier = [r for r in self.rounds() if r < server_round]
        atomic_write_bytes(self.path(server_round),
                           save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}))
        for old in earlier[:-1]:
            self.path(old).unlink(missing_ok=True)
