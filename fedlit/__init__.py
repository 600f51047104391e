"""fedlit: federated fine-tuning of large language models, the PyTorch Lightning way."""

import logging

from fedlit.hub_code import apply_inherited_policy
from fedlit.lazy import lazy_exports

# No code from a model hub unless the config opts in (model.hub_code), decided before peft imports bitsandbytes, whose
# CPU backend fetches a kernel from the Hub on import; it warns that it could not and runs its built-in kernel.
apply_inherited_policy()
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"
_EXPORTS = {"Client": "fedlit.client", "FederatedLoop": "fedlit.server.loop", "Federation": "fedlit.federation",
            "Update": "fedlit.payload"}
__all__ = [*_EXPORTS, "__version__"]
__getattr__ = lazy_exports(__name__, _EXPORTS)
