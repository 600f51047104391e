"""The protocol's messages: explicit dataclasses that travel as msgpack bytes, in-process or over a network.

Stages (Bonawitz et al. 2017, Fig. 4; Bell et al. 2020): 0 the server announces the round; 1 clients
advertise public keys; 2 they share their secrets, encrypted to each neighbour, through the server;
3 they send masked inputs; 4 survivors return the shares the server needs to remove the masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedlit.wire import pack, unpack


@dataclass(frozen=True)
class RoundSetup:
    """Server -> every participant: who takes part, the neighbour graph, the threshold and the round's ring
    (Z_2^bits, fixed-point ``scale``: the server picks it from the settings, narrower for compressed updates)."""

    server_round: int
    participants: list[str]
    neighbours: dict[str, list[str]]
    threshold: int
    vector_length: int
    bits: int
    scale: float


@dataclass(frozen=True)
class AdvertiseKeys:
    """Client -> server: public keys for share encryption and for masks, and a commitment to the self-mask seed."""

    client_id: str
    server_round: int
    cipher_public_key: bytes
    mask_public_key: bytes
    self_mask_commitment: bytes


@dataclass(frozen=True)
class NeighbourKeys:
    """Server -> client: the advertised keys of its neighbours that took part in stage 1."""

    server_round: int
    keys: list[AdvertiseKeys]


@dataclass(frozen=True)
class EncryptedShares:
    """Sender -> recipient (via the server): its shares of the sender's self-mask seed and mask secret key."""

    server_round: int
    sender: str
    recipient: str
    ciphertext: bytes


@dataclass(frozen=True)
class ShareKeys:
    """Client -> server, stage 2: one encrypted bundle per neighbour."""

    client_id: str
    server_round: int
    shares: list[EncryptedShares]


@dataclass(frozen=True)
class ForwardedShares:
    """Server -> client: the bundles its neighbours addressed to it; their senders form its stage-2 set."""

    server_round: int
    shares: list[EncryptedShares]


@dataclass(frozen=True)
class MaskedInput:
    """Client -> server, stage 3: its fixed-point input plus self-mask and pairwise masks, modulo 2^bits, packed
    at ``bits`` bits a value (:func:`fedlit.compression.bits.pack_bits`)."""

    client_id: str
    server_round: int
    packed: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    """Server -> survivors, stage 4: who sent a masked input and who dropped after sharing."""

    server_round: int
    survivors: list[str]
    dropped: list[str]


@dataclass(frozen=True)
class UnmaskResponse:
    """Survivor -> server: shares of survivors' self-mask seeds and of dropped clients' mask secret keys."""

    client_id: str
    server_round: int
    self_mask_shares: dict[str, list]  # owner -> [x, share bytes]
    secret_key_shares: dict[str, list]


MESSAGES = {cls.__name__: cls for cls in (RoundSetup, AdvertiseKeys, NeighbourKeys, EncryptedShares, ShareKeys,
                                          ForwardedShares, MaskedInput, UnmaskRequest, UnmaskResponse)}


def encode(message: Any) -> bytes:
    """msgpack bytes of a message (arrays as raw bytes with dtype and shape)."""
    return pack(message)


def decode(data: bytes) -> Any:
    """The message :func:`encode` wrote; anything else raises ValueError."""
    return unpack(data, MESSAGES, "secure-aggregation message")
