"""Lightning callbacks a user adds to every client fit (``client_callbacks:``); the client mods that carry the
federation's features are in :mod:`fedlit.client.mods`."""

from fedlit.callbacks.fedprox import FedProx

__all__ = ["FedProx"]
