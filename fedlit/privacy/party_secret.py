"""The secret behind randomness that protects: DP noise (the server's central noise, each client's noise share and
DP-SGD noise and batch sampling) and private-inference perturbation are drawn from 32 bytes of OS entropy that only
the party adding them holds. The config's ``seed`` never reaches them: whoever knows a public seed could regenerate
the noise and subtract it. The server keeps its secret in its round checkpoints, a client in its own state
directory, so a resumed round draws exactly the noise of the uninterrupted run, and two fresh runs draw different
noise.

``insecure_seed`` derives the secret from a public number instead, for experiments whose tables must be
reproducible; every party that uses it says so in a warning, every time."""

from __future__ import annotations

import hashlib
import logging
import secrets
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedlit.files import atomic_write_bytes
from fedlit.secret_audit import born

log = logging.getLogger(__name__)

SECRET_BYTES = 32


def warn_insecure(holder: str, insecure_seed: int) -> None:
    log.warning("insecure_seed %d: the protective randomness of %s (DP noise, perturbation, watermark draws) is "
                "derived from a public seed: whoever knows it can regenerate and remove it. For reproducible "
                "experiments only.", insecure_seed, holder)


@dataclass(frozen=True, repr=False)
class PartySecret:
    """One party's secret: every protective draw is a generator seeded from it and the draw's purpose (the
    round, what it is for), so each purpose gets its own independent stream.

    The generators (numpy's PCG64, torch's Philox/Mersenne) are not cryptographic; their seed is a 256-bit
    secret (numpy) or 64 bits of one (torch), and their outputs are never released as such: only as noise on a
    sum or a perturbed token.
    """

    entropy: bytes
    holder: str = ""

    def __post_init__(self) -> None:
        if len(self.entropy) != SECRET_BYTES:
            raise ValueError(f"a party secret is {SECRET_BYTES} bytes, got {len(self.entropy)}")
        born(self.holder)

    def __reduce__(self) -> tuple:
        """A copy (pickle, copy) is made through the constructor, so that :mod:`fedlit.secret_audit` sees it."""
        return type(self), (self.entropy, self.holder)

    @classmethod
    def fresh(cls, holder: str, insecure_seed: int | None = None) -> PartySecret:
        """A new secret from the operating system's entropy; from ``insecure_seed`` and ``holder`` when set."""
        if insecure_seed is None:
            return cls(secrets.token_bytes(SECRET_BYTES), holder)
        warn_insecure(holder, insecure_seed)
        return cls(hashlib.sha256(f"fedlit-insecure-seed/{insecure_seed}/{holder}".encode()).digest(), holder)

    @classmethod
    def load_or_create(cls, path: Path, holder: str, insecure_seed: int | None = None) -> PartySecret:
        """The secret kept in ``path`` (hex, readable by its owner only), drawn and written on first use."""
        path = Path(path)
        if path.is_file():
            if insecure_seed is not None:
                warn_insecure(holder, insecure_seed)  # every use is said
            try:
                return cls(bytes.fromhex(path.read_text().strip()), holder)
            except ValueError as error:
                raise ValueError(f"secret file {path} of {holder} cannot be read: {error}") from None
        secret = cls.fresh(holder, insecure_seed)
        atomic_write_bytes(path, secret.entropy.hex().encode(), mode=0o600)
        return secret

    def hex(self) -> str:
        return self.entropy.hex()

    @classmethod
    def from_hex(cls, text: str, holder: str) -> PartySecret:
        return cls(bytes.fromhex(text), holder)

    def sequence(self, *purpose: int | str) -> np.random.SeedSequence:
        """The seed sequence of one purpose, e.g. ``("dp-noise", server_round)``."""
        words = [int.from_bytes(self.entropy[i:i + 4], "little") for i in range(0, SECRET_BYTES, 4)]
        words += [p if isinstance(p, int) else zlib.crc32(p.encode()) for p in purpose]
        return np.random.SeedSequence(words)

    def numpy(self, *purpose: int | str) -> np.random.Generator:
        """A numpy generator for one purpose."""
        return np.random.default_rng(self.sequence(*purpose))

    def torch(self, *purpose: int | str, device: torch.device | str = "cpu") -> torch.Generator:
        """A torch generator for one purpose, on ``device``."""
        seed = int(self.sequence(*purpose).generate_state(1, np.uint64)[0]) >> 1
        return torch.Generator(device=device).manual_seed(seed)
