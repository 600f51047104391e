"""A client's secure-aggregation endpoint: protocol messages in and out as bytes, its secrets kept inside."""

from __future__ import annotations

from fedlit.secure.config import SecureAggregationConfig
from fedlit.secure.messages import decode, encode
from fedlit.secure.protocol import ProtocolError, SecAggClient


class SecAggParty:
    """Answers the server's secure-aggregation stages for one client. Its :class:`SecAggClient` (key pairs,
    self-mask seed, the shares it holds for its neighbours) is created by the round's setup message and never
    leaves this object: only the encoded replies do. The fit masks its update with :attr:`secagg`.
    """

    def __init__(self, client_id: str, config: SecureAggregationConfig | None) -> None:
        self.client_id, self.secure_config = client_id, config
        self.secagg: SecAggClient | None = None

    def restore_state(self, state: bytes | None) -> None:
        """Take back the protocol state kept between messages (:meth:`saved_state`; ``None``: none yet), where a
        process answers one message and exits (a Flower party)."""
        self.secagg = (SecAggClient.from_bytes(state, self.secure_config)
                       if state is not None and self.secure_config is not None else None)

    def saved_state(self) -> bytes | None:
        """The protocol state to keep until the next message (``None``: none)."""
        return self.secagg.to_bytes() if self.secagg is not None else None

    def masker(self) -> SecAggClient:
        """This round's protocol state (after the setup message)."""
        if self.secagg is None:
            raise ProtocolError(f"client '{self.client_id}' got a secure-aggregation message before the round setup")
        return self.secagg

    def secagg_setup(self, message: bytes) -> bytes:
        """Round setup in, this client's public keys out (a fresh state every round)."""
        if self.secure_config is None:
            raise ProtocolError(f"client '{self.client_id}' is not configured for secure aggregation")
        self.secagg = SecAggClient(self.client_id, self.secure_config, decode(message))
        return encode(self.secagg.advertise())

    def secagg_share(self, message: bytes) -> bytes:
        """Neighbours' public keys in, encrypted shares of this client's secrets out."""
        return encode(self.masker().share(decode(message)))

    def secagg_receive_shares(self, message: bytes) -> bytes:
        """The neighbours' encrypted shares for this client, kept for the unmask stage."""
        self.masker().receive_shares(decode(message))
        return b""

    def secagg_unmask(self, message: bytes) -> bytes:
        """Unmask request in, the shares it allows out (once per round)."""
        return encode(self.masker().unmask(decode(message)))
