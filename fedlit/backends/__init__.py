"""Backends: where clients run. The loop hands one the round's requests and gets each client's reply."""

from fedlit.lazy import lazy_exports

_EXPORTS = {"Backend": "fedlit.backends.base", "ClientFailure": "fedlit.backends.messages",
            "FitIns": "fedlit.backends.messages", "FitRes": "fedlit.backends.messages",
            "LocalBackend": "fedlit.backends.local", "RayBackend": "fedlit.backends.ray"}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
