"""FederatedLoop: rounds of sampling, one client ``Trainer.fit`` each, aggregation, evaluation, checkpoint."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from fedlit.backends import FitIns
from fedlit.client import Client, ClientApps, ModuleFactory
from fedlit.data.datamodule import CausalLMDataModule
from fedlit.faults import ClientError
from fedlit.federation import Federation
from fedlit.files import atomic_directory
from fedlit.payload import Payload
from fedlit.seeds import client_seed
from fedlit.server.checkpoint import RoundCheckpoints, config_fingerprint
from fedlit.server.checks import check_federation, train_sizes
from fedlit.server.evaluation import RoundEvaluation, summary_line
from fedlit.server.interrupts import NothingTrained, interrupt_on_signals
from fedlit.server.progress import RoundProgress
from fedlit.server.run_dir import LOOP_OUTPUTS, check_fresh, lock_output_dir, unlock_output_dir
from fedlit.server.run_records import RunRecords, default_loggers

log = logging.getLogger(__name__)


class FederatedLoop:
    """Coordinates one ``lightning.Trainer`` per sampled client, round by round.

    Round 0 evaluates the initial global adapter; rounds 1..``federation.rounds`` train. A round: the strategy
    samples clients; the workflow (in the clear, or masked under secure aggregation) sends each one the global
    adapter and the client mods' settings, collects the fits under the fault policy and lets the strategy aggregate;
    the strategy's server hooks run (client-level DP's accounting, an algorithm's server training); the global
    adapter is evaluated every ``eval_every`` rounds; the run's rows, the global adapter, the strategy's state and
    the RNG states are checkpointed atomically under ``output_dir/checkpoints``, so ``fit(resume=True)`` continues
    bit-identically.

    Args:
        clients: the federation's members; ids must be unique.
        module_factory: builds a client's LightningModule; all of them share one frozen base model.
        federation: strategy, rounds, output_dir, loggers, seed, secure aggregation, faults, privacy, client
            Trainer options, ... (see :class:`~fedlit.federation.Federation`).
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
        report: Callable[[], None] = lambda: None,
    ) -> None:
        check_federation(clients, federation)
        self.federation, self.module_factory, self.report = federation, module_factory, report
        self.clients = {c.client_id: c for c in clients}
        self.strategy = federation.server_strategy(len(clients))  # wrapped in client-level DP when asked
        self.workflow = federation.workflow(federation.weight_bound(train_sizes(clients)))  # clear or masked
        self.output_dir = Path(federation.output_dir)
        self.trainer_kwargs = {**federation.trainer,
                               "callbacks": [*federation.trainer.get("callbacks", []), *federation.client_callbacks]}
        self.faults, self.backend = federation.effective_faults(), federation.backend
        loggers = list(federation.loggers) if federation.loggers is not None else default_loggers(self.output_dir)
        self.records = RunRecords(self.output_dir, loggers, federation.run_config)
        self.checkpoints = RoundCheckpoints(self.output_dir / "checkpoints",
                                            config_fingerprint({**(fingerprint or {}), **federation.resume_parts()}))
        self.evaluation = RoundEvaluation(list(self.clients), global_val, federation.eval_clients, federation.seed,
                                          self.trainer_kwargs, federation.harness, federation.rounds)
        self.stopped: str | None = None
        self.current_round = 0
        self.run_id = secrets.token_hex(8)  # a resume takes the checkpoint's: clients keep state under it
        self.global_payload: Payload | None = None

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every row of the run so far (metrics.csv)."""
        return self.records.history

    @property
    def accountant(self) -> Any:
        """The client-level DP accountant (``None`` without ``privacy``)."""
        return getattr(self.strategy, "accountant", None)

    def fit(self, resume: bool = False) -> Payload:
        """Run the remaining rounds and return the final global adapter (also saved under ``adapter/``).

        The output directory is locked for the call. A fresh run refuses a directory that holds an earlier
        run's outputs; ``resume`` continues from the newest valid checkpoint. Raises
        :class:`~fedlit.server.interrupts.RunInterrupted` on SIGTERM/SIGINT and
        :class:`~fedlit.server.interrupts.NothingTrained` when no round produced a new global adapter.
        """
        lock_output_dir(self.output_dir)
        try:
            with interrupt_on_signals(lambda: self.current_round, self.checkpoints.directory):
                payload = self._fit(resume)
        except BaseException as error:
            self.records.finalize("failed")
            if isinstance(error, ClientError):  # name the round; the last complete round's checkpoint stays
                raise ClientError(f"round {self.current_round}: {error}; continue with --resume true once fixed") \
                    from error
            raise
        finally:
            unlock_output_dir(self.output_dir)
        self.records.finalize("success")
        return payload

    def _fit(self, resume: bool) -> Payload:
        federation = self.federation
        self.backend.on_client_errors(self.faults.client_errors)
        self.backend.start(ClientApps(self.clients, self.module_factory, self.trainer_kwargs,
                                      federation.secure_aggregation, (self.output_dir / "client_state").resolve(),
                                      federation.watermark, federation.insecure_seed), self.faults.timeout_s)
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
            self.report()
            self.global_payload = self.strategy.initial(module.trainable_state_dict())
            self._evaluate(module, 0)
            self._end_round(0)
            start = 1
        self.records.start()
        with RoundProgress(self.federation.rounds, start, self.federation.progress) as bar:
            for server_round in range(start, self.federation.rounds + 1):
                self.current_round = server_round
                self.stopped = self.strategy.stop_reason(server_round)
                if self.stopped:
                    log.warning(self.stopped)
                    break
                self._run_round(module, server_round, bar)
        trained = self.records.trained_rounds()
        if not trained:
            raise NothingTrained(self.records.why_untrained(self.stopped))
        if len(trained) < self.records.rounds_run():
            log.warning("%d of %d rounds were skipped: %s", self.records.rounds_run() - len(trained),
                        self.records.rounds_run(), self.records.why_untrained(self.stopped))
        self._save(module)
        return self.global_payload

    def _run_round(self, module: L.LightningModule, server_round: int, bar: RoundProgress) -> None:
        seed = self.federation.seed
        sampled = self.strategy.configure_round(server_round, list(self.clients), seed)
        bar.start_round(server_round, len(sampled))
        mods = {**self.federation.client_mod_settings(), **self.strategy.fit_plan(self.workflow.masked)}
        requests = {cid: FitIns(wire, client_seed(seed, server_round, cid), server_round, self.run_id, mods)
                    for cid, wire in self._fit_wires(sampled).items()}
        self.global_payload, rows = self.workflow.train(self.backend, self.strategy, server_round, requests,
                                                        self.global_payload, self.faults, bar.client_done)
        payload, server_rows = self.strategy.after_round(self.global_payload, server_round,
                                                         client_seed(seed, server_round, "server"))
        self.global_payload = payload
        for row in [*rows, *server_rows]:
            self.records.record(server_round, row)
        if server_round % self.federation.eval_every == 0 or server_round == self.federation.rounds:
            summary = summary_line(self._evaluate(module, server_round))
        else:
            losses = [row["loss"] for row in rows if row["split"] == "train" and "excluded" not in row]
            summary = f"mean train loss {np.mean(losses) if losses else float('nan'):.4f}"
        self._end_round(server_round)
        bar.round_done(summary)

    def _fit_wires(self, sampled: list[str]) -> dict[str, bytes]:
        """Each sampled client's start of its fit as it travels, encoded once per distinct payload (the global
        adapter for every client, unless the strategy sends each its share)."""
        payloads = {cid: self.strategy.fit_payload(self.global_payload, cid) for cid in sampled}
        encoded: dict[int, bytes] = {}
        for payload in payloads.values():
            if id(payload) not in encoded:
                encoded[id(payload)] = self.workflow.global_wire(payload)
        return {cid: encoded[id(payload)] for cid, payload in payloads.items()}

    def _evaluate(self, module: L.LightningModule, server_round: int) -> dict[str, float]:
        """Validate the global adapter where the held-out splits are, and the strategy's server models; record the
        rows and return each party's loss."""
        rows, losses = self.evaluation(self.backend, module, self.global_payload, server_round)
        for row in [*rows, *self.strategy.evaluate()]:
            self.records.record(server_round, row)
        return losses

    def _end_round(self, server_round: int) -> None:
        """Write metrics.csv and the round checkpoint, both atomically."""
        self.records.write()
        self.checkpoints.save(server_round, {"run_id": self.run_id, "global_payload": self.global_payload,
                                             "strategy": self.strategy.state_dict(),
                                             "history": json.dumps(self.records.history)})

    def _resume(self, module: L.LightningModule) -> int | None:
        """Restore the newest valid round checkpoint; return the next round to run, or None when there is none."""
        found = self.checkpoints.newest()
        if found is None:
            return None
        path, state = found
        module.load_trainable_state_dict(state["global_payload"], who=f"checkpoint {path}")
        state = self.checkpoints.restore(path, state)
        self.global_payload, self.run_id = state["global_payload"], state["run_id"]
        self.strategy.load_state_dict(state["strategy"])
        self.records.replay(json.loads(state["history"]))
        return state["round"] + 1

    def _save(self, module: L.LightningModule) -> None:
        """The final global adapter as the module saves it (peft's ``save_pretrained`` for PEFT models), what the
        strategy's server side made, and the run's summary."""
        module.load_trainable_state_dict(self.global_payload, who="the global adapter")
        with atomic_directory(self.output_dir / "adapter") as tmp:
            module.save_adapter(tmp)
        self.strategy.save(self.output_dir, self.global_payload, self.records.history)
        self.records.finish(getattr(getattr(module, "model", None), "name_or_path", None))
