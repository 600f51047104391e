"""Secure aggregation (SecAgg / SecAgg+): the server learns only the sum of the clients' masked updates."""

from fedlit.lazy import lazy_exports

_EXPORTS = {"ProtocolError": "fedlit.secure.protocol", "RoundAbandoned": "fedlit.secure.protocol",
            "SecAggClient": "fedlit.secure.protocol", "SecAggServer": "fedlit.secure.protocol",
            "SecureAggregationConfig": "fedlit.secure.config", "SecureRound": "fedlit.secure.simulation"}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
