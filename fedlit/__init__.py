"""fedlit: federated fine-tuning of large language models, the PyTorch Lightning way."""

from fedlit.lazy import lazy_exports

__version__ = "0.1.0"
_EXPORTS = {"Client": "fedlit.client", "FederatedLoop": "fedlit.loop", "Federation": "fedlit.federation",
            "Update": "fedlit.payload"}
__all__ = [*_EXPORTS, "__version__"]
__getattr__ = lazy_exports(__name__, _EXPORTS)
