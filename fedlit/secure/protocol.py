"""SecAgg / SecAgg+ as two state machines: a client's round and the server's round.

The server sees public keys, ciphertexts it cannot open, masked vectors (added into a running sum on
arrival, never kept one by one) and, at the end, the shares it needs: self-mask seeds of survivors and
mask secret keys of dropped clients, never both for one client. Every message is checked; a bad one
raises :class:`ProtocolError` naming its sender before anything from it is used.
"""

from __future__ import annotations

import hashlib
import secrets

import msgpack
import numpy as np

from fedlit.compression.bits import pack_bits, unpack_bits
from fedlit.secret_audit import born
from fedlit.secure import keys, ring, shamir
from fedlit.secure.config import SecureAggregationConfig
from fedlit.secure.graph import neighbour_graph
from fedlit.secure.messages import (
    AdvertiseKeys,
    EncryptedShares,
    ForwardedShares,
    MaskedInput,
    NeighbourKeys,
    RoundSetup,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    decode,
    encode,
)


class ProtocolError(ValueError):
    """A message that breaks the protocol (wrong round, sender, length, dtype, share, ...)."""


class RoundAbandoned(RuntimeError):
    """Too few clients are left to remove the masks: the round aggregates nothing."""


def commitment(seed: bytes) -> bytes:
    return hashlib.sha256(b"fedlit-secagg-self-mask" + seed).digest()


def pair_mask_sign(owner: str, other: str) -> int:
    """The pair mask of (owner, other) is added by the smaller id and subtracted by the larger."""
    return 1 if owner < other else -1


def share_point(participants: list[str], client_id: str) -> int:
    return participants.index(client_id) + 1


def _check_round(message, server_round: int, who: str) -> None:
    if message.server_round != server_round:
        raise ProtocolError(f"{type(message).__name__} from {who} is for round {message.server_round}, "
                            f"this is round {server_round}")


class SecAggClient:
    """One client's side of one round. Call in order: :meth:`advertise`, :meth:`share`, :meth:`receive_shares`,
    :meth:`mask`, :meth:`unmask`."""

    def __init__(self, client_id: str, config: SecureAggregationConfig, setup: RoundSetup) -> None:
        if client_id not in setup.participants:
            raise ProtocolError(f"client '{client_id}' is not a participant of round {setup.server_round}")
        self.client_id, self.config, self.setup = client_id, config, setup
        self.cipher_key = keys.new_private_key()
        self.mask_key = keys.new_private_key()
        self.seed = secrets.token_bytes(32)
        self.neighbour_keys: dict[str, AdvertiseKeys] = {}
        self.received: dict[str, tuple[int, bytes, bytes]] = {}  # sender -> (x, seed share, key share)
        self.unmasked = False
        born(f"client '{client_id}'")

    def __reduce__(self) -> tuple:
        """A copy (pickle, copy) is made through :meth:`from_bytes`, so that :mod:`fedlit.secret_audit` sees it."""
        return type(self).from_bytes, (self.to_bytes(), self.config)

    @property
    def neighbours(self) -> list[str]:
        return self.setup.neighbours[self.client_id]

    def advertise(self) -> AdvertiseKeys:
        return AdvertiseKeys(self.client_id, self.setup.server_round, keys.public_bytes(self.cipher_key),
                             keys.public_bytes(self.mask_key), commitment(self.seed))

    def share(self, message: NeighbourKeys) -> ShareKeys:
        """Shamir-share the self-mask seed and the mask secret key among the neighbours that advertised keys."""
        _check_round(message, self.setup.server_round, "the server")
        for advert in message.keys:
            if advert.client_id not in self.neighbours or advert.client_id in self.neighbour_keys:
                raise ProtocolError(f"client '{self.client_id}' got keys of '{advert.client_id}', "
                                    "not a neighbour or sent twice")
            self.neighbour_keys[advert.client_id] = advert
        holders = sorted(self.neighbour_keys)
        if len(holders) < self.setup.threshold:
            raise RoundAbandoned(f"client '{self.client_id}' has {len(holders)} neighbours left, "
                                 f"{self.setup.threshold} needed")
        points = [share_point(self.setup.participants, h) for h in holders]
        seed_shares = shamir.split(self.seed, self.setup.threshold, points)
        key_shares = shamir.split(keys.private_bytes(self.mask_key), self.setup.threshold, points)
        bundles = []
        for holder, x in zip(holders, points, strict=True):
            key = keys.derive(self.cipher_key, self.neighbour_keys[holder].cipher_public_key, "shares",
                              self.setup.server_round, self.client_id, holder)
            plaintext = msgpack.packb([x, seed_shares[x], key_shares[x]])
            associated = f"{self.setup.server_round}|{self.client_id}|{holder}".encode()
            bundles.append(EncryptedShares(self.setup.server_round, self.client_id, holder,
                                           keys.encrypt(key, plaintext, associated)))
        return ShareKeys(self.client_id, self.setup.server_round, bundles)

    def receive_shares(self, message: ForwardedShares) -> None:
        """Decrypt and keep the shares addressed to this client; their senders are its stage-2 neighbours."""
        _check_round(message, self.setup.server_round, "the server")
        for bundle in message.shares:
            sender = bundle.sender
            if bundle.recipient != self.client_id or sender not in self.neighbour_keys or sender in self.received:
                raise ProtocolError(f"client '{self.client_id}' got an unexpected share bundle from '{sender}'")
            key = keys.derive(self.cipher_key, self.neighbour_keys[sender].cipher_public_key, "shares",
                              self.setup.server_round, sender, self.client_id)
            associated = f"{self.setup.server_round}|{sender}|{self.client_id}".encode()
            x, seed_share, key_share = msgpack.unpackb(
                keys.decrypt(key, bundle.ciphertext, associated, f"the shares from '{sender}'"))
            if x != share_point(self.setup.participants, self.client_id):
                raise ProtocolError(f"the shares from '{sender}' are for another share point")
            self.received[sender] = (x, seed_share, key_share)

    def mask(self, update: np.ndarray, num_examples: int) -> MaskedInput:
        """``num_examples * clip(update)`` in fixed point at the round's scale and ``num_examples`` (an integer) as
        it is, plus all masks, modulo 2^bits."""
        cfg, setup = self.config, self.setup
        bits = setup.bits
        if update.shape != (setup.vector_length - 1,):
            raise ProtocolError(f"client '{self.client_id}' update has shape {update.shape}, "
                                f"the round expects ({setup.vector_length - 1},)")
        weighted = num_examples * np.clip(update.astype(np.float64), -cfg.clip, cfg.clip)
        limit = (1 << (bits - 1)) // len(setup.participants) - 1
        try:  # the weight, an integer, in units (the update in fixed point)
            vector = np.append(ring.encode(weighted, setup.scale, bits, limit),
                               ring.encode(np.array([num_examples]), 1.0, bits, limit))
        except OverflowError as error:
            raise OverflowError(f"client '{self.client_id}': {error}") from None
        stream = ring.MaskStream(setup.vector_length, bits)
        stream.add(vector, self.seed)
        for other in sorted(self.received):  # neighbours that completed stage 2
            seed = keys.derive(self.mask_key, self.neighbour_keys[other].mask_public_key, "mask",
                               setup.server_round, self.client_id, other)
            stream.add(vector, seed, pair_mask_sign(self.client_id, other))
        return MaskedInput(self.client_id, setup.server_round, pack_bits(ring.reduce(vector, bits), bits))

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Reveal, per neighbour, the seed share if it survived or the key share if it dropped; never both,
        and only once per round."""
        _check_round(request, self.setup.server_round, "the server")
        survivors, dropped = set(request.survivors), set(request.dropped)
        if self.unmasked:
            raise ProtocolError(f"client '{self.client_id}' already answered an unmask request this round")
        if survivors & dropped:
            raise ProtocolError(f"clients {sorted(survivors & dropped)} are listed as survivors and dropped")
        if self.client_id not in survivors:
            raise ProtocolError(f"client '{self.client_id}' is not among the survivors it is asked to unmask")
        if len(survivors) < self.setup.threshold:
            raise RoundAbandoned(f"{len(survivors)} survivors, {self.setup.threshold} needed")
        self.unmasked = True
        seed_shares, key_shares = {}, {}
        for sender, (x, seed_share, key_share) in self.received.items():
            if sender in survivors:
                seed_shares[sender] = [x, seed_share]
            elif sender in dropped:
                key_shares[sender] = [x, key_share]
        return UnmaskResponse(self.client_id, self.setup.server_round, seed_shares, key_shares)

    def to_bytes(self) -> bytes:
        """The whole state, private keys included, as plain msgpack bytes: for a party whose stages run in
        separate processes (a Flower SuperNode starts one per message) to keep it on its own machine between
        them. It must never leave the party."""
        return encode({"client_id": self.client_id, "setup": self.setup, "seed": self.seed,
                       "cipher_key": keys.private_bytes(self.cipher_key), "mask_key": keys.private_bytes(self.mask_key),
                       "neighbour_keys": self.neighbour_keys, "received": self.received, "unmasked": self.unmasked})

    @classmethod
    def from_bytes(cls, data: bytes, config: SecureAggregationConfig) -> SecAggClient:
        """The state :meth:`to_bytes` wrote (plain data only: nothing in it can execute)."""
        state = decode(data)
        client = cls.__new__(cls)
        client.client_id, client.config, client.setup = state["client_id"], config, state["setup"]
        client.cipher_key = keys.private_key(state["cipher_key"])
        client.mask_key = keys.private_key(state["mask_key"])
        client.seed, client.unmasked = state["seed"], state["unmasked"]
        client.neighbour_keys = dict(state["neighbour_keys"])
        client.received = {sender: tuple(values) for sender, values in state["received"].items()}
        born(f"client '{client.client_id}'")
        return client


class SecAggServer:
    """The server's side of one round, stage by stage; it ends with the sum of the survivors' inputs."""

    def __init__(self, config: SecureAggregationConfig, server_round: int, participants: list[str],
                 vector_length: int, seed: int = 0) -> None:
        if len(set(participants)) != len(participants):
            raise ProtocolError(f"duplicate participants in {participants}")
        if len(participants) < 2:
            raise ProtocolError("secure aggregation needs at least 2 participants: one input is not hidden by a sum")
        self.config, self.server_round = config, server_round
        participants = sorted(participants)
        degree = config.degree(len(participants))
        self.setup = RoundSetup(server_round, participants, neighbour_graph(participants, degree, seed + server_round),
                                config.shares_needed(len(participants)), vector_length, config.bits, config.scale)
        self.adverts: dict[str, AdvertiseKeys] = {}
        self.sharers: set[str] = set()
        self.survivors: list[str] = []
        self.total = np.zeros(vector_length, dtype=ring.word_dtype(config.bits))

    def _sender(self, who: str, allowed: set[str] | list[str], seen: set[str] | dict, stage: str) -> None:
        if who not in self.setup.participants:
            raise ProtocolError(f"{stage}: unknown client id '{who}'")
        if who in seen:
            raise ProtocolError(f"{stage}: duplicate message from client '{who}'")
        if who not in allowed:
            raise ProtocolError(f"{stage}: client '{who}' did not complete the previous stage")

    def _require(self, clients: set[str], alive: set[str], stage: str) -> None:
        """Abandon unless every client in ``clients`` keeps at least ``threshold`` neighbours in ``alive``."""
        for client in sorted(clients):
            left = len(set(self.setup.neighbours[client]) & alive)
            if left < self.setup.threshold:
                raise RoundAbandoned(f"after {stage}, client '{client}' has {left} live neighbours, "
                                     f"{self.setup.threshold} needed to recover its masks")

    def receive_keys(self, adverts: list[AdvertiseKeys]) -> dict[str, NeighbourKeys]:
        for advert in adverts:
            _check_round(advert, self.server_round, f"client '{advert.client_id}'")
            self._sender(advert.client_id, self.setup.participants, self.adverts, "advertise keys")
            self.adverts[advert.client_id] = advert
        if len(self.adverts) < 2:
            raise RoundAbandoned(f"{len(self.adverts)} clients advertised keys, at least 2 needed")
        self._require(set(self.adverts), set(self.adverts), "advertise keys")
        return {c: NeighbourKeys(self.server_round, [self.adverts[n] for n in self.setup.neighbours[c]
                                                     if n in self.adverts]) for c in self.adverts}

    def receive_shares(self, messages: list[ShareKeys]) -> dict[str, ForwardedShares]:
        inbox: dict[str, list[EncryptedShares]] = {}
        for message in messages:
            who = message.client_id
            _check_round(message, self.server_round, f"client '{who}'")
            self._sender(who, set(self.adverts), self.sharers, "share keys")
            expected = {n for n in self.setup.neighbours[who] if n in self.adverts}
            recipients = [b.recipient for b in message.shares]
            if sorted(recipients) != sorted(expected) or any(b.sender != who for b in message.shares):
                raise ProtocolError(f"share keys: client '{who}' addressed {sorted(recipients)}, "
                                    f"expected its neighbours {sorted(expected)}")
            self.sharers.add(who)
            for bundle in message.shares:
                inbox.setdefault(bundle.recipient, []).append(bundle)
        self._require(self.sharers, self.sharers, "share keys")
        return {c: ForwardedShares(self.server_round, [b for b in inbox.get(c, []) if b.sender in self.sharers])
                for c in self.sharers}

    def receive_masked_input(self, message: MaskedInput) -> None:
        """Check one masked vector and add it into the running sum; nothing is kept per client."""
        who = message.client_id
        _check_round(message, self.server_round, f"client '{who}'")
        self._sender(who, self.sharers, set(self.survivors), "masked input")
        if not isinstance(message.packed, bytes):
            raise ProtocolError(f"masked input from client '{who}': expected packed bytes, got "
                                f"{type(message.packed).__name__}")
        try:
            vector = unpack_bits(message.packed, self.config.bits, len(self.total))
        except ValueError as error:
            raise ProtocolError(f"masked input from client '{who}': {error}") from None
        self.total += vector.astype(self.total.dtype)
        self.survivors.append(who)

    def unmask_request(self) -> UnmaskRequest:
        survivors = set(self.survivors)
        self._require(self.sharers, survivors, "masked input")
        return UnmaskRequest(self.server_round, sorted(survivors), sorted(self.sharers - survivors))

    def _reconstruct(self, owner: str, shares: dict[int, bytes], what: str, check) -> bytes:
        if len(shares) < self.setup.threshold:
            raise RoundAbandoned(f"{len(shares)} shares of client '{owner}''s {what}, {self.setup.threshold} needed")
        try:
            secret = shamir.combine(shares, self.setup.threshold)
        except ValueError:
            secret = None
        if secret is None or not check(secret):
            raise ProtocolError(f"the shares of client '{owner}''s {what} (from share points {sorted(shares)}) "
                                "do not reconstruct it")
        return secret

    def finish(self, responses: list[UnmaskResponse]) -> tuple[np.ndarray, float]:
        """Remove the masks; returns (sum of num_examples * clipped update, sum of num_examples)."""
        request = self.unmask_request()
        survivors, dropped = set(request.survivors), set(request.dropped)
        seed_shares: dict[str, dict[int, bytes]] = {c: {} for c in survivors}
        key_shares: dict[str, dict[int, bytes]] = {c: {} for c in dropped}
        responders: set[str] = set()
        for response in responses:
            who = response.client_id
            _check_round(response, self.server_round, f"client '{who}'")
            self._sender(who, survivors, responders, "unmask")
            responders.add(who)
            for owners, table in ((response.self_mask_shares, seed_shares), (response.secret_key_shares, key_shares)):
                for owner, (x, share) in owners.items():
                    if owner not in table or who not in self.setup.neighbours[owner]:
                        raise ProtocolError(f"unmask: client '{who}' sent a share of '{owner}' it was not asked for")
                    if x != share_point(self.setup.participants, who):
                        raise ProtocolError(f"unmask: client '{who}' sent a share at the wrong point")
                    table[owner][x] = share
        cfg = self.config
        total = self.total.copy()
        stream = ring.MaskStream(len(total), cfg.bits)
        for owner, shares in sorted(seed_shares.items()):
            seed = self._reconstruct(owner, shares, "self-mask seed",
                                     lambda s, o=owner: commitment(s) == self.adverts[o].self_mask_commitment)
            stream.add(total, seed, -1)
        for owner, shares in sorted(key_shares.items()):
            secret_key = self._reconstruct(
                owner, shares, "mask secret key",
                lambda s, o=owner: keys.public_bytes(s) == self.adverts[o].mask_public_key)
            for other in sorted(set(self.setup.neighbours[owner]) & survivors):
                seed = keys.derive(secret_key, self.adverts[other].mask_public_key, "mask", self.server_round,
                                   owner, other)
                stream.add(total, seed, -pair_mask_sign(other, owner))  # remove what the survivor added
        total = ring.reduce(total, cfg.bits)
        return ring.decode(total[:-1], cfg.scale, cfg.bits), float(ring.decode(total[-1:], 1.0, cfg.bits)[0])
