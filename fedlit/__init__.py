"""fedlit: federated fine-tuning of large language models, the PyTorch Lightning way."""

import logging

from fedlit.lazy import lazy_exports

# bitsandbytes (imported by peft) warns on import that it cannot fetch an optional CPU kernel from a model hub; its
# built-in CPU kernel runs instead, so offline the warning only misleads.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"
_EXPORTS = {"Client": "fedlit.client", "FederatedLoop": "fedlit.loop", "Federation": "fedlit.federation",
            "Update": "fedlit.payload"}
__all__ = [*_EXPORTS, "__version__"]
__getattr__ = lazy_exports(__name__, _EXPORTS)
