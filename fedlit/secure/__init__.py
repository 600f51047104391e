"""Secure aggregation (SecAgg / SecAgg+): the server learns only the sum of the clients' masked updates."""

from fedlit.secure.config import SecureAggregationConfig
from fedlit.secure.protocol import ProtocolError, RoundAbandoned, SecAggClient, SecAggServer
from fedlit.secure.simulation import SecureRound

__all__ = ["ProtocolError", "RoundAbandoned", "SecAggClient", "SecAggServer", "SecureAggregationConfig", "SecureRound"]
