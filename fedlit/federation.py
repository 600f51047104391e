"""Federation: the settings every algorithm shares, in one object. Each algorithm entry point takes one plus its
own keys (model, data, adapter, ...); in YAML its fields stay top-level keys (``rounds:``, ``strategy:``, ...)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from jsonargparse.typing import PositiveInt
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger

from fedlit.backends import Backend, LocalBackend
from fedlit.benchmarks.harness import HarnessConfig
from fedlit.compression.config import CompressionConfig
from fedlit.devices import spans_devices
from fedlit.faults import FaultPolicy
from fedlit.multi_device import spanning_strategy
from fedlit.privacy import ClientDPConfig, ExampleDPConfig
from fedlit.privacy.client_dp import CLIP_TOLERANCE
from fedlit.secure import SecureAggregationConfig
from fedlit.secure.masked_workflow import SecureAggregationWorkflow
from fedlit.server.round_workflow import PlainWorkflow, Workflow
from fedlit.strategies import DPFedAvg, FedAvg, Strategy
from fedlit.watermark import WatermarkConfig
from fedlit.watermark.key import check_signature_fits


@dataclass
class Federation:
    """How the federation runs, whatever the algorithm.

    Args:
        strategy: client sampling and aggregation (default: FedAvg over all clients).
        rounds: federated rounds.
        eval_every: evaluate after every n-th round (round 0 and the last are always evaluated).
        eval_clients: evaluate a seeded sample of this many clients' held-out splits (plus the global split)
            each time; ``None``: every client. With hundreds of clients, evaluating all would cost more than
            the round.
        output_dir: metrics.csv, adapter/, checkpoints/ and logs/ (locked for the run; never another run's).
        loggers: Lightning loggers for round metrics (default: a CSVLogger under ``output_dir/logs``).
        seed: seeds the adapter initialisation, client sampling and every client fit; never a protection's
            randomness (DP noise, noise shares, DP-SGD): each party draws that from its own secret.
        insecure_seed: derive every party's protective randomness from this public number instead of OS entropy,
            so tables are reproducible; whoever knows it can remove the noise. Warned on every use; experiments only.
        progress: Rich progress over rounds and clients.
        client_callbacks: extra Lightning callbacks for every client fit (e.g. ``fedlit.callbacks.FedProx``).
        secure_aggregation: mask client updates so the server learns only their weighted mean
            (``fedlit.secure``); ``None`` sends adapters in the clear.
        faults: what happens to clients that raise, stall or send bad updates (``fedlit.faults.FaultPolicy``).
        privacy: client-level differential privacy, DP-FedAvg (``fedlit.privacy.ClientDPConfig``).
        example_privacy: example-level differential privacy, DP-SGD in every client
            (``fedlit.privacy.ExampleDPConfig``).
        trainer: ``lightning.Trainer`` options for every client fit (the CLI's ``trainer:`` group).
        backend: where clients run (:mod:`fedlit.backends`): in this process one after another
            (``LocalBackend``, the default), or elsewhere; it never changes what they compute.
        compression: quantized updates on the wire (``fedlit.compression.CompressionConfig``); ``None``: float32.
        watermark: each (chosen) client embeds its own ownership watermark while it trains and keeps its key
            (``fedlit.watermark.WatermarkConfig``; verify with ``fedlit verify``).
        harness: score the global adapter on lm-evaluation-harness tasks after the last round (and every
            ``harness.every`` rounds), on the server (``fedlit.benchmarks.HarnessConfig``; rows ``split: harness``).
        run_config: the run's whole configuration, given to every logger as its hyperparameters (the ``fedlit``
            command passes its merged config; not a config key itself).
    """

    strategy: Strategy = field(default_factory=FedAvg)
    rounds: PositiveInt = 3
    eval_every: PositiveInt = 1
    eval_clients: PositiveInt | None = None
    output_dir: str = "outputs/fedlit"
    loggers: list[Logger] | None = None
    seed: int = 0
    insecure_seed: int | None = None
    progress: bool = True
    client_callbacks: list[Callback] = field(default_factory=list)
    secure_aggregation: SecureAggregationConfig | None = None
    faults: FaultPolicy = field(default_factory=FaultPolicy)
    privacy: ClientDPConfig | None = None
    example_privacy: ExampleDPConfig | None = None
    trainer: dict[str, Any] = field(default_factory=dict)
    backend: Backend = field(default_factory=LocalBackend)
    compression: CompressionConfig | None = None
    watermark: WatermarkConfig | None = None
    harness: HarnessConfig | None = None
    run_config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for key, why in self.strategy.refused_settings().items():
            if getattr(self, key) is not None:
                raise ValueError(f"strategy {type(self.strategy).__name__} cannot run with {key}: {why}; leave {key} "
                                 "unset")
        if self.watermark is not None and self.watermark.signature is not None and self.example_privacy is not None:
            raise ValueError("watermark.signature cannot be embedded under example_privacy (DP-SGD replaces the "
                             "gradient the sign loss adds to): use watermark.trigger only, or client-level privacy")
        strategy = self.trainer.get("strategy", "auto")
        if isinstance(strategy, str) and strategy not in ("auto", "single_device"):
            spanning_strategy(strategy)  # (one that cannot span a client's devices: refused before round 0)
        if self.example_privacy is not None and spans_devices(self.trainer):
            raise ValueError("example_privacy (DP-SGD) runs on one device: each rank would clip and noise its own "
                             "share of the batch; set trainer.devices: 1, or use client-level privacy")
        if (self.privacy is not None and self.privacy.noise_multiplier > 0 and self.secure_aggregation is not None
                and self.compression is not None):
            raise ValueError("privacy.noise_multiplier > 0 with secure_aggregation and compression: each client would "
                             "round its own noisy share, and the sum of rounded shares is not a function of the "
                             "noised sum, so the accountant's epsilon would not hold; drop compression (or "
                             "secure_aggregation: in the clear the server adds the noise after decoding)")

    def server_strategy(self, num_clients: int) -> Strategy:
        """The strategy as the server runs it over ``num_clients``: wrapped in client-level DP under ``privacy``."""
        if self.privacy is None:
            return self.strategy
        return DPFedAvg(self.strategy, self.privacy, num_clients, self.faults.min_clients, self.insecure_seed)

    def client_mod_settings(self) -> dict[str, dict[str, Any]]:
        """The client mods every fit runs with, by name, and their settings as plain data (the strategy adds its own:
        :meth:`~fedlit.strategies.Strategy.fit_plan`)."""
        asked = {"dp_sgd": self.example_privacy, "compression": self.compression}
        return {mod: dataclasses.asdict(config) for mod, config in asked.items() if config is not None}

    def weight_bound(self, train_sizes: list[int]) -> int:
        """The largest weight a client's update carries: its example count, or 1 under client-level DP."""
        return 1 if self.privacy is not None else max(train_sizes)

    def workflow(self, max_weight: int = 1) -> Workflow:
        """How a round's fits travel: masked under ``secure_aggregation``, else in the clear (quantized under
        ``compression``); ``max_weight``: see :meth:`weight_bound`."""
        if self.secure_aggregation is None:
            return PlainWorkflow(self.compression)
        return SecureAggregationWorkflow(self.secure_aggregation, self.seed, self.compression, max_weight)

    def effective_faults(self) -> FaultPolicy:
        """The fault policy; under client-level DP an update longer than the clip norm (a client that did not
        clip) is a fault unless a bound is set, or the updates are compressed (quantizing may lengthen a clipped
        update a little: the server clips it again, :class:`~fedlit.strategies.DPFedAvg`)."""
        if self.privacy is None or self.faults.max_update_norm is not None or self.compression is not None:
            return self.faults
        return dataclasses.replace(self.faults, max_update_norm=self.privacy.clip_norm * CLIP_TOLERANCE)

    def check_module(self, trainable: Mapping[str, torch.Tensor]) -> None:
        """Refuse, before round 0, shared settings the clients' trainable parameters cannot take: a watermark
        signature whose ``parameters`` match none of them, or whose ``bits`` exceed their entries."""
        if self.watermark is not None and self.watermark.signature is not None:
            check_signature_fits(trainable, self.watermark.signature)

    def resume_parts(self) -> dict[str, Any]:
        """The shared settings a resumed run must keep (with the algorithm's own: model, data, peft, ...): a changed
        watermark would keep old keys under new settings, changed compression would change the bytes mid-run, and
        changed privacy would make the accountant's epsilon wrong."""
        return {"watermark": self.watermark, "compression": self.compression, "privacy": self.privacy,
                "example_privacy": self.example_privacy}

    def replace(self, **changes: Any) -> Federation:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)


FEDERATION_KEYS = tuple(f.name for f in dataclasses.fields(Federation))
