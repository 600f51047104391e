"""Key agreement and authenticated encryption between two clients, from the ``cryptography`` package.

X25519 gives each pair of clients a shared secret; HKDF-SHA256 derives independent keys from it for
each purpose and round; ChaCha20-Poly1305 encrypts the Shamir shares that travel through the server.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

_NONCE = bytes(12)  # each share key encrypts exactly one message


def new_private_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def private_key(data: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(data)


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def public_bytes(key: X25519PrivateKey | bytes) -> bytes:
    if isinstance(key, bytes):
        key = private_key(key)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def derive(private: bytes | X25519PrivateKey, peer_public: bytes, purpose: str, server_round: int,
           a: str, b: str) -> bytes:
    """A 32-byte key for ``purpose`` shared by clients ``a`` and ``b`` in ``server_round`` (order-free)."""
    if isinstance(private, bytes):
        private = private_key(private)
    shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    low, high = sorted((a, b))
    info = f"fedlit-secagg|{purpose}|{server_round}|{low}|{high}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(_NONCE, plaintext, associated)


def decrypt(key: bytes, ciphertext: bytes, associated: bytes, what: str) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE, ciphertext, associated)
    except InvalidTag:
        raise ValueError(f"{what} failed authentication: tampered, or not meant for this client") from None
