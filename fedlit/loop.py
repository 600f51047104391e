"""FederatedLoop: rounds of sampling, one client ``Trainer.fit`` each, aggregation, evaluation, checkpoint."""

from __future__ import annotations

import collections
import contextlib
import csv
import io
import json
import logging
import secrets
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.loggers import CSVLogger, Logger

from fedlit.backends import ClientFailure, FitIns, FitRes
from fedlit.checkpoint import (
    CheckpointError,
    checkpoint_path,
    config_fingerprint,
    list_checkpoints,
    newest_valid_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from fedlit.client import Client, ClientApps, ModuleFactory
from fedlit.data.datamodule import CausalLMDataModule
from fedlit.data.federated import GLOBAL
from fedlit.faults import ClientError
from fedlit.federation import Federation
from fedlit.files import atomic_directory, atomic_write_bytes
from fedlit.payload import Payload, Update, to_bytes
from fedlit.progress import RoundProgress
from fedlit.run_dir import LOOP_OUTPUTS, check_fresh, lock_output_dir, unlock_output_dir
from fedlit.seeds import client_seed
from fedlit.tracking import RunLogger, RunRecord, row_metrics, run_summary
from fedlit.validation import validate
from fedlit.workflow import Excluded, RoundSkipped

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["round", "client", "split", "model", "loss", "perplexity", "token_accuracy", "exact_match",
                  "choice_accuracy", "num_examples", "bytes_received", "bytes_sent", "seconds", "update_norm",
                  "epsilon", "excluded"]


def check_federation(clients: Sequence[Client], federation: Federation) -> None:
    """Refuse settings that could never train, before any model work: each error names the key and value."""
    strategy, faults = federation.strategy, federation.faults
    secure_aggregation = federation.secure_aggregation
    ids = [c.client_id for c in clients]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate client ids: {duplicates}")
    if not ids:
        raise ValueError("the federation has no clients (data.clients / data.num_clients)")
    if GLOBAL in ids:
        raise ValueError(f"'{GLOBAL}' is reserved for the server's held-out split; rename that client")
    if federation.watermark is not None:
        federation.watermark.check_clients(ids)
    for key in ("rounds", "eval_every"):
        if getattr(federation, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(federation, key)}")
    try:
        per_round = strategy.sample_size(len(ids))
    except ValueError as error:
        raise ValueError(f"strategy.clients_per_round: {error}") from None
    if faults.min_clients > per_round:
        raise ValueError(f"faults.min_clients is {faults.min_clients} but only {per_round} clients are sampled per "
                         "round (strategy.clients_per_round): no round could ever be aggregated")
    if secure_aggregation is not None:  # (client-level DP refuses such a strategy when DPFedAvg wraps it)
        if strategy.needs_individual_updates:
            raise ValueError(f"{type(strategy).__name__} needs each client's update, which secure aggregation hides:"
                             " use a strategy that works on the mean update (FedAvg, FedAvgM, FedAdam, ...)")
        secure_aggregation.check_round_size(per_round)
        secure_aggregation.warn_if_capped(per_round)
        if federation.compression is None:  # (a compressed round's ring is sized to fit)
            secure_aggregation.check_ring(per_round, federation.weight_bound(_train_sizes(clients)))


def _train_sizes(clients: Sequence[Client]) -> list[int]:
    return [len(c.datamodule.train_dataset) for c in clients]


def default_loggers(output_dir: Path) -> list[Logger]:
    """The loggers a run gets when none are configured: a CSVLogger under ``output_dir/logs``."""
    return [CSVLogger(save_dir=str(output_dir), name="logs", version="")]


class RunInterrupted(BaseException):
    """SIGTERM or SIGINT arrived during a run. A BaseException, so that no client-fault handler swallows it; the
    last complete round's checkpoint stays valid and ``--resume`` continues from it."""

    def __init__(self, signum: int, server_round: int, checkpoint_dir: Path) -> None:
        self.signum = signum
        name = signal.Signals(signum).name
        done = f"round {server_round - 1} is the last complete one" if server_round > 0 else "no round is complete"
        super().__init__(f"interrupted by {name} during round {server_round}; {done} (checkpoints in "
                         f"{checkpoint_dir}): continue with --resume true")


class NothingTrained(RuntimeError):
    """No round of the run produced a new global adapter (every round skipped, or the privacy budget was spent
    before the first)."""


@contextlib.contextmanager
def _interrupt_on_signals(current_round: Callable[[], int], checkpoint_dir: Path) -> Iterator[None]:
    """Turn SIGTERM and SIGINT into :class:`RunInterrupted` naming the round in progress (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise RunInterrupted(signum, current_round(), checkpoint_dir)

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class FederatedLoop:
    """Coordinates one ``lightning.Trainer`` per sampled client, round by round.

    Round 0 evaluates the initial global adapter; rounds 1..``federation.rounds`` train. After every round the
    global adapter, the strategy state, the metric history and RNG states are checkpointed atomically
    under ``output_dir/checkpoints``, so ``fit(resume=True)`` continues bit-identically.

    Args:
        clients: the federation's members; ids must be unique.
        module_factory: builds a client's LightningModule; all of them share one frozen base model.
        federation: strategy, rounds, output_dir, loggers, seed, secure aggregation, faults, privacy, client
            Trainer options, ... (see :class:`~fedlit.federation.Federation`). Under ``secure_aggregation`` the
            server learns only the example-weighted mean update, which the strategy's ``step`` turns into the
            new global adapter; under ``privacy`` (DP-FedAvg) updates are clipped, noised as a sum (by the
            server, or in shares by the clients under masking), divided by a fixed denominator, and (epsilon,
            delta) is a ``server``/``privacy`` row every round, the run stopping before ``target_epsilon`` is
            passed; under ``example_privacy`` each client's train row carries its own DP-SGD epsilon so far.
        global_val: the server's held-out split, evaluated every round as client ``global``.
        fingerprint: the run's setup by part (model, data, peft, ...): every checkpoint records a hash of each,
            and a resume with a different setup is refused, naming the part.
        report: writes the run's data report (partition.csv/png) once, on a fresh start, after the output
            directory has been locked and checked.
    """

    def __init__(
        self,
        clients: Sequence[Client],
        module_factory: ModuleFactory,
        federation: Federation,
        global_val: CausalLMDataModule | None = None,
        fingerprint: Mapping[str, Any] | None = None,
        report: Callable[[], None] | None = None,
    ) -> None:
        check_federation(clients, federation)
        self.federation = federation
        self.clients = {c.client_id: c for c in clients}
        self.module_factory = module_factory
        self.strategy = federation.server_strategy(len(clients))  # wrapped in client-level DP when asked
        self.workflow = federation.workflow(federation.weight_bound(_train_sizes(clients)))  # clear or masked
        self.rounds = federation.rounds
        self.output_dir = Path(federation.output_dir)
        self.trainer_kwargs = {**federation.trainer,
                               "callbacks": [*federation.trainer.get("callbacks", []), *federation.client_callbacks]}
        self.global_val = global_val
        self.loggers = list(federation.loggers) if federation.loggers is not None else default_loggers(self.output_dir)
        self.seed = federation.seed
        self.progress = federation.progress
        self.eval_every = federation.eval_every
        self.backend = federation.backend
        self.faults = federation.effective_faults()
        self.example_privacy = federation.example_privacy
        self.example_steps: dict[str, int] = {}  # DP-SGD steps each client has taken so far
        self.fingerprint = config_fingerprint({**(fingerprint or {}), **federation.resume_parts()})
        self.report = report
        self.stopped: str | None = None
        self.current_round = 0
        self.run_id = secrets.token_hex(8)  # a resume takes the checkpoint's: clients keep state under it
        self.history: list[dict[str, Any]] = []
        self.global_payload: Payload | None = None

    @property
    def accountant(self) -> Any:
        """The client-level DP accountant (``None`` without ``privacy``)."""
        return getattr(self.strategy, "accountant", None)

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    def fit(self, resume: bool = False) -> Payload:
        """Run the remaining rounds and return the final global adapter (also saved under ``adapter/``).

        The output directory is locked for the call. A fresh run refuses a directory that holds an earlier
        run's outputs; ``resume`` continues from the newest valid checkpoint. Raises :class:`RunInterrupted`
        on SIGTERM/SIGINT and :class:`NothingTrained` when no round produced a new global adapter.
        """
        lock_output_dir(self.output_dir)
        try:
            with _interrupt_on_signals(lambda: self.current_round, self.checkpoint_dir):
                payload = self._fit(resume)
        except BaseException as error:
            for logger in self.loggers:
                logger.finalize("failed")
            if isinstance(error, ClientError):  # name the round; the last complete round's checkpoint stays
                raise ClientError(f"round {self.current_round}: {error}; continue with --resume true once fixed") \
                    from error
            raise
        finally:
            unlock_output_dir(self.output_dir)
        for logger in self.loggers:
            logger.finalize("success")
        return payload

    def _fit(self, resume: bool) -> Payload:
        self.backend.on_client_errors(self.faults.client_errors)
        self.backend.start(ClientApps(self.clients, self.module_factory, self.trainer_kwargs,
                                      self.federation.secure_aggregation, (self.output_dir / "client_state").resolve(),
                                      self.federation.watermark, self.federation.insecure_seed),
                           self.faults.timeout_s)
        try:
            return self._rounds(resume)
        finally:
            self.backend.close()

    def _rounds(self, resume: bool) -> Payload:
        module = self.module_factory()
        self.federation.check_module(module.trainable_state_dict())
        start = self._resume(module) if resume else None
        if start is None:
            if not resume:
                check_fresh(self.output_dir, LOOP_OUTPUTS)
            if self.report is not None:
                self.report()
            self.global_payload = self.strategy.initial(module.trainable_state_dict())
            self._evaluate(module, 0)
            self._end_round(0)
            start = 1
        if self.federation.run_config is not None:
            for logger in self.loggers:
                logger.log_hyperparams(self.federation.run_config)
        with RoundProgress(self.rounds, start, self.progress) as bar:
            for server_round in range(start, self.rounds + 1):
                self.current_round = server_round
                self.stopped = self.strategy.stop_reason(server_round)
                if self.stopped:
                    log.warning(self.stopped)
                    break
                self._run_round(module, server_round, bar)
        if not self.trained_rounds:
            raise NothingTrained(self._why_untrained())
        skipped = self.rounds_run() - len(self.trained_rounds)
        if skipped:
            log.warning("%d of %d rounds were skipped: %s", skipped, self.rounds_run(), self._why_untrained())
        self._save_adapter(module)
        self._save_summary(module)
        return self.global_payload

    def rounds_run(self) -> int:
        """Training rounds that ran (trained or skipped) so far."""
        return len({row["round"] for row in self.history if row["round"] > 0})

    @property
    def trained_rounds(self) -> list[int]:
        """Rounds that produced a new global adapter: every round that ran except the skipped ones (each a
        ``server``/``round`` row)."""
        skipped = {row["round"] for row in self.history if row["split"] == "round"}
        return sorted({row["round"] for row in self.history if row["round"] > 0} - skipped)

    def _why_untrained(self) -> str:
        """A summary of why rounds were skipped and clients excluded: each distinct reason with its count."""
        reasons = collections.Counter(row["excluded"] for row in self.history if row.get("excluded"))
        if self.stopped:
            reasons[self.stopped] += 1
        if not reasons:
            return "no round ran"
        return "; ".join(f"{reason} (x{count})" for reason, count in reasons.most_common(5))

    def _run_round(self, module: L.LightningModule, server_round: int, bar: RoundProgress) -> None:
        sampled = self.strategy.configure_round(server_round, list(self.clients), self.seed)
        bar.start_round(server_round, len(sampled))
        global_wire = self.workflow.global_wire(self.global_payload)
        plan = self.strategy.fit_plan(self.workflow.masked)
        requests = {cid: self._fit_ins(cid, server_round, global_wire, plan) for cid in sampled}
        stats: dict[str, dict[str, Any]] = {}
        try:
            replies = self.workflow.fit(self.backend, server_round, requests, self.global_payload, bar.client_done)
            updates = []
            for client_id, reply in replies.items():
                update, stats[client_id] = self._accept(client_id, reply, server_round, len(global_wire))
                updates += [update] if update is not None else []
            if len(updates) < self.faults.min_clients:
                raise RoundSkipped(f"{len(updates)} of {len(replies)} sampled clients sent a usable update "
                                   f"(min_clients {self.faults.min_clients})")
            self.global_payload = self.workflow.aggregate(self.strategy, self.global_payload, updates)
        except RoundSkipped as why:
            self._skip(server_round, str(why), stats)
        else:
            self._record_clients(server_round, stats)
        self.global_payload, rows = self.strategy.after_round(self.global_payload, server_round,
                                                              client_seed(self.seed, server_round, "server"))
        for row in rows:
            self._record(server_round, row)
        if server_round % self.eval_every == 0 or server_round == self.rounds:
            losses = self._evaluate(module, server_round)
            shown = GLOBAL if GLOBAL in losses else "mean client"
            summary = f"{shown} val loss {losses.get(GLOBAL, np.mean(list(losses.values()))):.4f}"
        else:
            train_losses = [v["loss"] for v in stats.values() if "excluded" not in v]
            summary = f"mean train loss {np.mean(train_losses) if train_losses else float('nan'):.4f}"
        self._end_round(server_round)
        bar.round_done(summary)

    def _fit_ins(self, client_id: str, server_round: int, global_wire: bytes, plan: dict[str, Any]) -> FitIns:
        """What ``client_id`` gets for its fit this round: the global adapter, its seed and the strategy's plan."""
        return FitIns(global_wire, client_seed(self.seed, server_round, client_id), example_dp=self.example_privacy,
                      example_dp_steps=self.example_steps.get(client_id, 0), server_round=server_round,
                      run_id=self.run_id, compression=self.federation.compression, **plan)

    def _accept(self, client_id: str, reply: FitRes | ClientFailure, server_round: int,
                bytes_received: int) -> tuple[Update | None, dict[str, Any]]:
        """One client's reply under the fault policy: its update (None when excluded) and its train row."""
        values: dict[str, Any] = {"bytes_received": bytes_received, "bytes_sent": 0, "seconds": reply.seconds}
        update, problem = None, getattr(reply, "reason", None)
        if isinstance(reply, FitRes):
            values["bytes_sent"] = len(reply.wire)
            if "dp_sgd_steps" in reply.metrics:  # spent even if the update is then refused
                steps = int(reply.metrics["dp_sgd_steps"])
                self.example_steps[client_id] = self.example_steps.get(client_id, 0) + steps
                values["epsilon"] = reply.metrics["dp_sgd_epsilon"]
            try:
                update = self.workflow.accept(client_id, reply, self.global_payload, self.faults.max_update_norm)
            except Excluded as error:
                problem = str(error)
            except Exception as error:  # noqa: BLE001 - a malformed reply excludes that client, never the round
                problem = f"{type(error).__name__}: {error}"
        if problem is not None:
            log.warning("round %d: client '%s' excluded: %s", server_round, client_id, problem)
            return None, {**values, "excluded": problem}
        values["loss"] = update.metrics.get("train_loss_epoch", float("nan"))
        return update, {**values, **self.workflow.row(client_id, update, self.global_payload)}

    def _record_clients(self, server_round: int, stats: Mapping[str, dict[str, Any]]) -> None:
        for client_id, values in stats.items():
            self._record(server_round, {"client": client_id, "split": "train", **values})

    def _skip(self, server_round: int, reason: str, stats: Mapping[str, dict[str, Any]]) -> None:
        self._record_clients(server_round, stats)
        log.warning("round %d skipped, global adapter unchanged: %s", server_round, reason)
        self._record(server_round, {"client": "server", "split": "round", "excluded": f"round skipped: {reason}"})

    def _evaluate(self, module: L.LightningModule, server_round: int) -> dict[str, float]:
        """Validate the global adapter on the clients' held-out splits (all, or a seeded sample of
        ``eval_clients``) and the global one; record the rows and return each party's loss."""
        ids, sample = list(self.clients), self.federation.eval_clients
        if sample is not None and sample < len(ids):
            drawn = np.random.default_rng([self.seed, server_round, 1]).choice(len(ids), size=sample, replace=False)
            ids = [ids[i] for i in sorted(drawn.tolist())]
        wire = to_bytes(self.global_payload)
        replies = self.backend.call("evaluate", {cid: wire for cid in ids})
        results = {}
        for client_id in ids:  # each client evaluates its own split, where its data is
            reply = replies[client_id]
            if isinstance(reply, ClientFailure):
                log.warning("round %d: client '%s' was not evaluated: %s", server_round, client_id, reply.reason)
                self._record(server_round, {"client": client_id, "split": "val", "excluded": reply.reason})
            else:
                results[client_id] = reply
        if self.global_val is not None:  # the server's own split: only here does its module need the adapter
            module.load_trainable_state_dict(self.global_payload, who="the global adapter")
            (values,) = validate(module, {GLOBAL: self.global_val}, self.trainer_kwargs).values()
            results[GLOBAL] = {**values, "num_examples": len(self.global_val.val_dataset)}
        for party, values in results.items():
            self._record(server_round, {"client": party, "split": "val", **values})
        for row in self.strategy.evaluate():
            self._record(server_round, row)
        return {party: values["loss"] for party, values in results.items()}

    def _record(self, server_round: int, row: dict[str, Any]) -> None:
        """Keep ``row`` for metrics.csv and log it."""
        self.history.append({"round": server_round, **row})
        self._log(self.history[-1])

    def _log(self, row: dict[str, Any]) -> None:
        """Log a history row's numbers to every logger (names: :mod:`fedlit.tracking.names`; step = its round)."""
        for logger in self.loggers:
            logger.log_metrics(row_metrics(row), step=row["round"])

    def _end_round(self, server_round: int) -> None:
        """Write metrics.csv and the round checkpoint, both atomically."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_bytes(self.output_dir / "metrics.csv", buffer.getvalue().encode())
        save_checkpoint({
            "round": server_round,
            "run_id": self.run_id,
            "fingerprint": self.fingerprint,
            "global_payload": self.global_payload,
            "strategy": self.strategy.state_dict(),
            "example_steps": self.example_steps,
            "history": json.dumps(self.history),
            "rng": rng_state(),
        }, checkpoint_path(self.checkpoint_dir, server_round))
        for logger in self.loggers:
            logger.save()

    def _resume(self, module: L.LightningModule) -> int | None:
        """Restore the newest valid round checkpoint; return the next round to run, or None when there is none.
        Damaged newer checkpoints are skipped with a warning; a different setup is refused."""
        found = newest_valid_checkpoint(self.checkpoint_dir)
        if found is None:
            if list_checkpoints(self.checkpoint_dir):
                raise CheckpointError(f"resume: no checkpoint in {self.checkpoint_dir} can be read (see the warnings)")
            log.warning("resume: no checkpoint in %s, starting from round 0", self.checkpoint_dir)
            return None
        path, state = found
        module.load_trainable_state_dict(state["global_payload"], who=f"checkpoint {path}")
        changed = sorted(part for part in set(self.fingerprint) | set(state["fingerprint"])
                         if self.fingerprint.get(part) != state["fingerprint"].get(part))
        if changed:
            raise CheckpointError(f"resume: checkpoint {path} was written with a different {', '.join(changed)} "
                                  "setup than this run's; resume with the same settings, or start a new run in "
                                  "another output_dir")
        self.global_payload = state["global_payload"]
        self.run_id = state.get("run_id", self.run_id)
        self.strategy.load_state_dict(state["strategy"])
        self.history = json.loads(state["history"])
        self.example_steps = dict(state["example_steps"])
        set_rng_state(state["rng"])
        for row in self.history:  # loggers that start afresh (Lightning's CSVLogger does) get the whole record
            self._log(row)
        log.info("resumed from %s", path)
        return state["round"] + 1

    def _save_adapter(self, module: L.LightningModule) -> None:
        """The final global adapter, as the module saves it (peft's ``save_pretrained`` for PEFT models)."""
        module.load_trainable_state_dict(self.global_payload, who="the global adapter")
        with atomic_directory(self.output_dir / "adapter") as tmp:
            module.save_adapter(tmp)
        self.strategy.save(self.output_dir, self.global_payload, self.history)

    def _save_summary(self, module: L.LightningModule) -> None:
        """``summary.json`` (the run's summary: :func:`~fedlit.tracking.run_summary`), also handed to the loggers
        that keep a whole-run record."""
        summary = run_summary(self.history)
        atomic_write_bytes(self.output_dir / "summary.json", json.dumps(summary, indent=1).encode())
        record = RunRecord(self.output_dir, summary, getattr(getattr(module, "model", None), "name_or_path", None))
        for logger in self.loggers:
            if isinstance(logger, RunLogger):
                logger.log_run(record)
