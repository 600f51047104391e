"""A party's own backend when it builds its client: its data read in its own process, and the client package the
server sent it (FedOST's emulator), never one it builds: a party never holds the owner's full model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fedlit.backends.local import LocalBackend


class ReceivedPackage(LocalBackend):
    """:class:`~fedlit.backends.LocalBackend`, with ``client_package`` answered by the received package; the
    data it reads makes this party's client only."""

    sees_every_client = False

    def __init__(self, directory: Path | None) -> None:
        super().__init__()
        self.directory = directory

    def client_package(self, directory: Path, build: Callable[[Path], None]) -> Path:
        if self.directory is None:
            raise ValueError("this run's clients train on a package the server sends, and none has arrived")
        return self.directory
