"""What every algorithm does with the federated data: one Client per member, and the FederatedLoop over them."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

from fedlit.client import Client, ModuleFactory
from fedlit.data.federated import FederatedData
from fedlit.data.partition_report import write_partition_report
from fedlit.federation import Federation
from fedlit.server.loop import FederatedLoop


def federated_loop(
    federated: FederatedData,
    module_factory: ModuleFactory,
    federation: Federation,
    *,
    fingerprint: Mapping[str, Any],
    client_factories: Mapping[str, ModuleFactory] | None = None,
    personal: bool = False,
) -> FederatedLoop:
    """A FederatedLoop over ``federated``'s clients that writes the partition report when it starts afresh;
    ``client_factories`` give clients their own module (``module_factory`` still builds the one that
    evaluates); ``personal`` clients keep their own state between fits and are evaluated on their own module;
    ``fingerprint`` names the setup a resume must match (model, data, peft, ...). An algorithm's server side is a
    strategy wrapper in ``federation.strategy``."""
    report = functools.partial(write_partition_report, federated, Path(federation.output_dir),
                               console=None if federation.progress else Console(quiet=True))
    return FederatedLoop(
        clients=[Client(cid, dm, (client_factories or {}).get(cid), personal) for cid, dm in federated.clients.items()],
        module_factory=module_factory,
        federation=federation,
        global_val=federated.global_val,
        fingerprint=fingerprint,
        report=report,
    )
