"""Seeds derived from (run seed, round, party), so that any round can be replayed or resumed exactly, wherever
it runs."""

from __future__ import annotations

import zlib

import numpy as np


def client_seed(seed: int, server_round: int, client_id: str) -> int:
    """A seed that depends only on (seed, round, client); ``client_id`` may also name a server-side draw."""
    return int(np.random.SeedSequence([seed, server_round, zlib.crc32(client_id.encode())]).generate_state(1)[0])
