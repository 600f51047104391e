"""FederatedLoop: rounds of sampling, one client ``Trainer.fit`` each, aggregation, evaluation, checkpoint."""

from __future__ import annotations

import csv
import io
import logging
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import Logger

from fedlit.client import CLIENT_TRAINER_DEFAULTS, Client, ModuleFactory, client_seed
from fedlit.data.datamodule import CausalLMDataModule
from fedlit.data.federated import GLOBAL
from fedlit.io import atomic_directory, atomic_torch_save, atomic_write_bytes
from fedlit.payload import Payload, flatten, to_bytes, unflatten
from fedlit.progress import RoundProgress
from fedlit.secure import SecureAggregationConfig, SecureRound
from fedlit.strategies import Strategy

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["round", "client", "split", "model", "loss", "perplexity", "token_accuracy", "exact_match",
                  "choice_accuracy", "num_examples", "bytes_received", "bytes_sent", "seconds"]
# Only these Trainer options carry over to the server's Trainers: where and in what precision the model runs.
_EVAL_TRAINER_KEYS = ("accelerator", "devices", "precision")


class ServerStep(Protocol):
    """Server-side training between aggregation and evaluation, e.g. FedCoLLM's mutual distillation.

    It holds models of its own: their state travels in the loop's round checkpoints, their metrics in its
    rows. A row is ``{"client": ..., "split": ..., "model": ..., <metric columns>}``; ``model`` names the
    server's model (the federated one's rows leave it empty).
    """

    def __call__(self, payload: Payload, server_round: int, seed: int) -> tuple[Payload, list[dict[str, Any]]]:
        """Take the aggregated adapter; return the one clients get next round, and training rows."""

    def evaluate(self) -> list[dict[str, Any]]:
        """Held-out rows of the server's own models."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def save(self, directory: Path) -> None:
        """Export the server's own trained state at the end of the run (atomically)."""


def server_trainer(trainer_kwargs: dict[str, Any], **overrides: Any) -> L.Trainer:
    """A quiet Trainer for the server's own work, on the accelerator and in the precision of the clients'
    ``trainer_kwargs``."""
    placement = {key: trainer_kwargs[key] for key in _EVAL_TRAINER_KEYS if key in trainer_kwargs}
    return L.Trainer(**{**CLIENT_TRAINER_DEFAULTS, "limit_val_batches": None, **placement, **overrides})


def validate(module: L.LightningModule, parties: Mapping[str, CausalLMDataModule],
             trainer_kwargs: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per party, the module's validation metrics on its held-out split (names without ``val_``), with one
    :func:`server_trainer`."""
    trainer = server_trainer(trainer_kwargs)
    results = {}
    for party, datamodule in parties.items():
        (metrics,) = trainer.validate(module, dataloaders=datamodule.val_dataloader(), verbose=False)
        results[party] = {name.removeprefix("val_"): value for name, value in metrics.items()}
    return results


class FederatedLoop:
    """Coordinates one ``lightning.Trainer`` per sampled client, round by round.

    Round 0 evaluates the initial global adapter; rounds 1..``rounds`` train. After every round the
    global adapter, the strategy state, the metric history and RNG states are checkpointed atomically
    under ``output_dir/checkpoints``, so ``fit(resume=True)`` continues bit-identically.

    Args:
        clients: the federation; ids must be unique.
        module_factory: builds a client's LightningModule; all of them share one frozen base model.
        strategy: client sampling and aggregation.
        rounds: number of training rounds.
        output_dir: ``metrics.csv``, ``adapter/`` and ``checkpoints/`` go here.
        trainer_kwargs: ``lightning.Trainer`` options for every client fit (max_steps, precision, ...).
        global_val: the server's held-out split, evaluated every round as client ``global``.
        loggers: Lightning loggers that receive every round's metrics (step = round).
        seed: seeds every client fit through (seed, round, client id).
        progress: show a Rich progress display.
        eval_every: evaluate after every ``eval_every``-th round (and always after round 0 and the last);
            evaluation of large models or many clients can cost more than a round of training.
        secure_aggregation: mask every client's update (SecAgg/SecAgg+): the server learns only the
            example-weighted mean update, which the strategy's ``step`` turns into the new global adapter.
        server_step: server-side training after each aggregation (see :class:`ServerStep`); it runs with
            the same evaluation schedule and its state is checkpointed with the round.
    """

    def __init__(
        self,
        clients: Sequence[Client],
        module_factory: ModuleFactory,
        strategy: Strategy,
        rounds: int,
        output_dir: str | Path,
        trainer_kwargs: dict[str, Any] | None = None,
        global_val: CausalLMDataModule | None = None,
        loggers: Sequence[Logger] = (),
        seed: int = 0,
        progress: bool = True,
        eval_every: int = 1,
        secure_aggregation: SecureAggregationConfig | None = None,
        server_step: ServerStep | None = None,
    ) -> None:
        ids = [c.client_id for c in clients]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate client ids: {duplicates}")
        if GLOBAL in ids:
            raise ValueError(f"'{GLOBAL}' is reserved for the server's held-out split; rename that client")
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        if secure_aggregation is not None and strategy.needs_individual_updates:
            raise ValueError(f"{type(strategy).__name__} needs each client's update, which secure aggregation "
                             "hides: use a strategy that works on the mean update (FedAvg, FedAvgM, FedAdam, ...)")
        if eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {eval_every}")
        self.clients = {c.client_id: c for c in clients}
        self.module_factory = module_factory
        self.strategy = strategy
        self.rounds = rounds
        self.output_dir = Path(output_dir)
        self.trainer_kwargs = dict(trainer_kwargs or {})
        self.global_val = global_val
        self.loggers = list(loggers)
        self.seed = seed
        self.progress = progress
        self.eval_every = eval_every
        self.secure_aggregation = secure_aggregation
        self.server_step = server_step
        self.history: list[dict[str, Any]] = []
        self.global_payload: Payload | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    def fit(self, resume: bool = False) -> Payload:
        """Run the remaining rounds and return the final global adapter (also saved under ``adapter/``)."""
        module = self.module_factory()
        start = self._resume(module) if resume else None
        if start is None:
            if any(self.checkpoint_dir.glob("round-*.ckpt")):
                raise FileExistsError(
                    f"{self.checkpoint_dir} already holds checkpoints: resume, or use another output_dir"
                )
            self.global_payload = module.trainable_state_dict()
            self._evaluate(module, 0)
            self._end_round(0)
            start = 1
        with RoundProgress(self.rounds, start, self.progress) as bar:
            for server_round in range(start, self.rounds + 1):
                self._run_round(module, server_round, bar)
        self._save_adapter(module)
        for logger in self.loggers:
            logger.finalize("success")
        return self.global_payload

    def _run_round(self, module: L.LightningModule, server_round: int, bar: RoundProgress) -> None:
        sampled = self.strategy.configure_round(server_round, list(self.clients), self.seed)
        bar.start_round(server_round, len(sampled))
        global_wire = to_bytes(self.global_payload)
        secure = None
        if self.secure_aggregation is not None:
            secure = SecureRound(self.secure_aggregation, server_round, sampled,
                                 sum(t.numel() for t in self.global_payload.values()), self.seed)
            sampled = secure.exchange_keys()
        updates, stats = [], {}
        for client_id in sampled:
            bar.client_started(client_id)
            began = time.perf_counter()
            wire, update = self.clients[client_id].fit(
                global_wire, self.module_factory, self.trainer_kwargs,
                client_seed(self.seed, server_round, client_id),
                masker=secure.clients[client_id] if secure else None,
            )
            if secure:
                secure.submit(client_id, wire)
            updates.append(update)
            stats[client_id] = {
                "loss": update.metrics.get("train_loss_epoch", float("nan")),
                **({} if secure else {"num_examples": update.num_examples}),  # masked too under secure aggregation
                "bytes_received": len(global_wire),
                "bytes_sent": len(wire),
                "seconds": round(time.perf_counter() - began, 3),
            }
            bar.client_done()
        if secure:
            self.global_payload = self.strategy.step(self.global_payload, self._unmasked_mean(secure))
            for client_id, values in stats.items():  # the whole protocol's traffic, masked input included
                values["bytes_sent"] = secure.bytes_sent[client_id]
                values["bytes_received"] += secure.bytes_received[client_id]
        else:
            self.global_payload = self.strategy.aggregate(self.global_payload, updates)
        for client_id, values in stats.items():
            self._record(server_round, {"client": client_id, "split": "train", **values})
        if self.server_step is not None:
            self.global_payload, rows = self.server_step(self.global_payload, server_round,
                                                         client_seed(self.seed, server_round, "server"))
            for row in rows:
                self._record(server_round, row)
        if server_round % self.eval_every == 0 or server_round == self.rounds:
            losses = self._evaluate(module, server_round)
            shown = GLOBAL if GLOBAL in losses else "mean client"
            summary = f"{shown} val loss {losses.get(GLOBAL, np.mean(list(losses.values()))):.4f}"
        else:
            summary = f"mean train loss {np.mean([v['loss'] for v in stats.values()]):.4f}"
        self._end_round(server_round)
        bar.round_done(summary)

    def _unmasked_mean(self, secure: SecureRound) -> Payload:
        """The example-weighted mean client adapter, from the unmasked sums of the masked round."""
        weighted_sum, total_examples = secure.finish()
        return unflatten(flatten(self.global_payload) + weighted_sum / total_examples, self.global_payload)

    def _evaluate(self, module: L.LightningModule, server_round: int) -> dict[str, float]:
        """Validate the global adapter on every client's held-out split and the global one; record the rows
        and return each party's loss."""
        module.load_trainable_state_dict(self.global_payload, who="the global adapter")
        parties = {cid: c.datamodule for cid, c in self.clients.items()}
        if self.global_val is not None:
            parties[GLOBAL] = self.global_val
        results = validate(module, parties, self.trainer_kwargs)
        for party, values in results.items():
            self._record(server_round, {"client": party, "split": "val", **values,
                                        "num_examples": len(parties[party].val_dataset)})
        for row in self.server_step.evaluate() if self.server_step is not None else ():
            self._record(server_round, row)
        return {party: values["loss"] for party, values in results.items()}

    def _record(self, server_round: int, row: dict[str, Any]) -> None:
        """Keep ``row`` for metrics.csv and log its numbers as ``[model/]client/split_metric``."""
        self.history.append({"round": server_round, **row})
        prefix = "/".join(filter(None, (row.get("model"), row["client"])))
        step_metrics = {f"{prefix}/{row['split']}_{k}": float(v) for k, v in row.items()
                        if k not in ("client", "split", "model")}
        for logger in self.loggers:
            logger.log_metrics(step_metrics, step=server_round)

    def _end_round(self, server_round: int) -> None:
        """Write metrics.csv and the round checkpoint, both atomically."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_bytes(self.output_dir / "metrics.csv", buffer.getvalue().encode())
        atomic_torch_save({
            "round": server_round,
            "global_payload": self.global_payload,
            "strategy": self.strategy.state_dict(),
            "server_step": self.server_step.state_dict() if self.server_step is not None else None,
            "history": self.history,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        }, self.checkpoint_dir / f"round-{server_round:04d}.ckpt")
        for logger in self.loggers:
            logger.save()

    def _resume(self, module: L.LightningModule) -> int | None:
        """Restore the newest round checkpoint; return the next round to run, or None when there is none."""
        checkpoints = sorted(self.checkpoint_dir.glob("round-*.ckpt"))
        if not checkpoints:
            log.warning("resume: no checkpoint in %s, starting from round 0", self.checkpoint_dir)
            return None
        state = torch.load(checkpoints[-1], weights_only=False)
        module.load_trainable_state_dict(state["global_payload"], who=f"checkpoint {checkpoints[-1]}")
        self.global_payload = state["global_payload"]
        self.strategy.load_state_dict(state["strategy"])
        if self.server_step is not None:
            self.server_step.load_state_dict(state["server_step"])
        self.history = state["history"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        log.info("resumed from %s", checkpoints[-1])
        return state["round"] + 1

    def _save_adapter(self, module: L.LightningModule) -> None:
        """The final global adapter, as the module saves it (peft's ``save_pretrained`` for PEFT models)."""
        module.load_trainable_state_dict(self.global_payload, who="the global adapter")
        with atomic_directory(self.output_dir / "adapter") as tmp:
            module.save_adapter(tmp)
        if self.server_step is not None:
            self.server_step.save(self.output_dir)
