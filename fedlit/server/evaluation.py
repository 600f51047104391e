"""Evaluating the global adapter after a round: each (sampled) client's held-out split where its data is, and the
server's own held-out split when it has one."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np

from fedlit.backends import Backend, ClientFailure
from fedlit.benchmarks.harness import HarnessConfig
from fedlit.data.datamodule import CausalLMDataModule
from fedlit.data.federated import GLOBAL
from fedlit.payload import Payload, to_bytes
from fedlit.validation import validate

log = logging.getLogger(__name__)


class RoundEvaluation:
    """Rows and losses of the global adapter on the parties' held-out splits.

    Args:
        client_ids: the federation's members.
        global_val: the server's held-out split, evaluated as client ``global`` (``None``: the server has none).
        eval_clients: evaluate a sample of this many clients, drawn from (seed, round) (``None``: every client).
        seed: the run's seed.
        trainer_kwargs: the server Trainer's options for the global split (device, precision).
        harness: also score the global adapter on lm-evaluation-harness tasks, on the server, when due (a ``harness``
            row: ``harness/<task>/<metric>`` columns).
        rounds: the run's rounds (the harness runs after the last).
    """

    def __init__(self, client_ids: Sequence[str], global_val: CausalLMDataModule | None, eval_clients: int | None,
                 seed: int, trainer_kwargs: dict[str, Any], harness: HarnessConfig | None = None,
                 rounds: int = 0) -> None:
        self.client_ids, self.global_val, self.eval_clients = list(client_ids), global_val, eval_clients
        self.seed, self.trainer_kwargs, self.harness, self.rounds = seed, trainer_kwargs, harness, rounds
        self.harness_tasks = None
        if harness is not None:
            from fedlit.benchmarks.harness import checked_tasks

            self.harness_tasks = checked_tasks(harness)  # (a wrong task name fails now, not after the last round)

    def sampled(self, server_round: int) -> list[str]:
        ids, sample = self.client_ids, self.eval_clients
        if sample is None or sample >= len(ids):
            return ids
        drawn = np.random.default_rng([self.seed, server_round, 1]).choice(len(ids), size=sample, replace=False)
        return [ids[i] for i in sorted(drawn.tolist())]

    def __call__(self, backend: Backend, module: L.LightningModule, payload: Payload,
                 server_round: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """The ``val`` rows (a client that did not answer: its reason in ``excluded``) and each party's loss."""
        ids, wire = self.sampled(server_round), to_bytes(payload)
        replies = backend.call("evaluate", {cid: wire for cid in ids})
        rows, results = [], {}
        for client_id in ids:  # each client evaluates its own split, where its data is
            reply = replies[client_id]
            if isinstance(reply, ClientFailure):
                log.warning("round %d: client '%s' was not evaluated: %s", server_round, client_id, reply.reason)
                rows.append({"client": client_id, "split": "val", "excluded": reply.reason})
            else:
                results[client_id] = reply
        if self.global_val is not None:  # the server's own split: only here does its module need the adapter
            module.load_trainable_state_dict(payload, who="the global adapter")
            (values,) = validate(module, {GLOBAL: self.global_val}, self.trainer_kwargs).values()
            results[GLOBAL] = {**values, "num_examples": len(self.global_val.val_dataset)}
        rows += [{"client": party, "split": "val", **values} for party, values in results.items()]
        if self.harness is not None and self.harness.due(server_round, self.rounds):
            rows.append(self.harness_row(module, payload))
        return rows, {party: values["loss"] for party, values in results.items()}

    def harness_row(self, module: L.LightningModule, payload: Payload) -> dict[str, Any]:
        """The global adapter's harness scores, on the server's module (its model and tokenizer, its device)."""
        from fedlit.benchmarks.harness import harness_row, run_harness

        tokenizer = getattr(module, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(f"harness: this algorithm's module ({type(module).__name__}) holds no tokenizer to score "
                             "with; evaluate its output with fedlit evaluate instead")
        module.load_trainable_state_dict(payload, who="the global adapter")
        model = module.model.eval()
        results = run_harness(model, tokenizer, self.harness, next(model.parameters()).device, self.harness_tasks)
        return {"client": GLOBAL, "split": "harness", **harness_row(results)}


def summary_line(losses: dict[str, float]) -> str:
    """The progress bar's note for an evaluated round: the global split's loss, else the clients' mean."""
    shown = GLOBAL if GLOBAL in losses else "mean client"
    return f"{shown} val loss {losses.get(GLOBAL, np.mean(list(losses.values()))):.4f}"
