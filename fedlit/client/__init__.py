"""The client side: a member's id and data, the app that answers the server wherever the client runs, and the client
mods chained into its ``Trainer.fit`` (:mod:`fedlit.client.mods`)."""

from fedlit.client.app import ClientApp, ClientApps
from fedlit.client.member import CLIENT_TRAINER_DEFAULTS, Client, ModuleFactory

__all__ = ["CLIENT_TRAINER_DEFAULTS", "Client", "ClientApp", "ClientApps", "ModuleFactory"]
