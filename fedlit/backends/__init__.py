"""Backends: where clients run. The loop hands one the round's requests and gets each client's reply."""

from fedlit.backends.base import Backend, ClientFailure, FitIns, FitRes
from fedlit.backends.local import LocalBackend
from fedlit.backends.ray import RayBackend  # imports Ray only when a RayBackend starts

__all__ = ["Backend", "ClientFailure", "FitIns", "FitRes", "LocalBackend", "RayBackend"]
