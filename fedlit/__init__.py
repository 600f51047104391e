"""fedlit: federated fine-tuning of large language models, the PyTorch Lightning way."""

from fedlit.client import Client
from fedlit.federation import Federation
from fedlit.loop import FederatedLoop
from fedlit.payload import Update

__version__ = "0.1.0"
__all__ = ["Client", "FederatedLoop", "Federation", "Update", "__version__"]
