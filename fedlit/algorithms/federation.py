"""What every algorithm shares: clients from the federated data, default loggers, the FederatedLoop."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger
from rich.console import Console

from fedlit.client import Client, ModuleFactory
from fedlit.data.federated import FederatedData
from fedlit.data.report import write_partition_report
from fedlit.faults import FaultPolicy
from fedlit.loop import FederatedLoop, ServerStep
from fedlit.privacy import ClientDPConfig, ExampleDPConfig
from fedlit.secure import SecureAggregationConfig
from fedlit.strategies import FedAvg, Strategy


def federated_loop(
    federated: FederatedData,
    module_factory: ModuleFactory,
    *,
    strategy: Strategy | None,
    rounds: int,
    eval_every: int,
    output_dir: str | Path,
    loggers: Sequence[Logger] | None,
    seed: int,
    progress: bool,
    client_callbacks: Sequence[Callback],
    secure_aggregation: SecureAggregationConfig | None,
    trainer_kwargs: dict[str, Any] | None,
    client_factories: Mapping[str, ModuleFactory] | None = None,
    server_step: ServerStep | None = None,
    faults: FaultPolicy | None = None,
    privacy: ClientDPConfig | None = None,
    example_privacy: ExampleDPConfig | None = None,
    fingerprint: Mapping[str, Any] | None = None,
) -> FederatedLoop:
    """A FederatedLoop over ``federated``'s clients that writes the partition report when it starts afresh;
    loggers default to a CSVLogger under ``output_dir/logs``; ``client_callbacks`` join every client fit;
    ``client_factories`` give clients their own module (``module_factory`` still builds the one that
    evaluates); ``server_step`` runs after each aggregation; ``fingerprint`` names the setup a resume must
    match (model, data, peft, ...)."""
    report = functools.partial(write_partition_report, federated, Path(output_dir),
                               console=None if progress else Console(quiet=True))
    trainer_kwargs = dict(trainer_kwargs or {})
    trainer_kwargs["callbacks"] = [*trainer_kwargs.get("callbacks", []), *client_callbacks]
    if loggers is None:
        loggers = [CSVLogger(save_dir=str(output_dir), name="logs", version="")]
    return FederatedLoop(
        clients=[Client(cid, dm, (client_factories or {}).get(cid)) for cid, dm in federated.clients.items()],
        module_factory=module_factory,
        strategy=strategy or FedAvg(),
        rounds=rounds,
        eval_every=eval_every,
        output_dir=output_dir,
        trainer_kwargs=trainer_kwargs,
        global_val=federated.global_val,
        loggers=loggers,
        seed=seed,
        progress=progress,
        secure_aggregation=secure_aggregation,
        server_step=server_step,
        faults=faults,
        privacy=privacy,
        example_privacy=example_privacy,
        fingerprint=fingerprint,
        report=report,
    )
