"""SCAFFOLD's client side (Karimireddy et al., ICML 2020, option II): every local step's gradient is corrected by
``c - c_i``, the server's control variate minus the client's own, so that a client whose data pulls it away from
the others (very non-IID data) drifts less; after the fit the client's variate becomes ``c_i - c + (x - y_i) /
(sum of its step sizes)``, its new estimate of its own gradient. The client's variate stays where the client runs
(its state directory, one file per round, so a round run again after a crash reads what the first attempt read);
only its change goes back, to the server side (:class:`~fedlit.strategies.Scaffold`)."""

from __future__ import annotations

from collections import OrderedDict

import lightning as L
import torch

from fedlit.backends.messages import FitRes
from fedlit.client.fit_context import ClientMod, FitContext
from fedlit.client.round_store import RoundStore
from fedlit.lightning_modules.causal_lm import CausalLMModule
from fedlit.payload import Payload, from_bytes, to_bytes

NAME = "scaffold"


class DriftCorrection(ClientMod):
    """Adds ``c - c_i`` to each trainable parameter's gradient once per optimiser step (after accumulation), sums
    the steps' learning rates, and at the fit's end stores the client's new variate and reports its change.

    Args:
        client_id: named in errors.
        control: the server's variate ``c`` (the trainable tensors' names and shapes).
        own: the client's variate ``c_i`` from its last fit (``None``: zero, its first fit).
        store: where the client keeps its variate, by round.
        server_round: this fit's round.
    """

    END_STATE = ("new", "change")

    def __init__(self, client_id: str, control: Payload, own: Payload | None, store: RoundStore,
                 server_round: int) -> None:
        self.client_id, self.control, self.store, self.server_round = client_id, control, store, server_round
        self.own = own if own is not None else OrderedDict((n, torch.zeros_like(t)) for n, t in control.items())
        self.start: dict[str, torch.Tensor] = {}
        self.correction: dict[str, torch.Tensor] = {}
        self.lr_sum = 0.0
        self.new: Payload | None = None
        self.change: Payload | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: CausalLMModule) -> None:
        params = pl_module.trainable_parameters()
        differing = sorted((set(params) ^ set(self.control)) | (set(params) ^ set(self.own)))
        if differing:
            raise ValueError(f"client '{self.client_id}': the SCAFFOLD control variates and its trainable tensors "
                             f"differ in {differing[:3]}{' ...' if len(differing) > 3 else ''}")
        self.start = {n: p.detach().to("cpu", torch.float32, copy=True) for n, p in params.items()}
        self.correction = {n: (self.control[n].float() - self.own[n].float()).to(p.device, p.dtype)
                           for n, p in params.items()}
        self.lr_sum = 0.0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: CausalLMModule, optimizer) -> None:
        for name, param in pl_module.trainable_parameters().items():
            if param.grad is not None:
                param.grad.add_(self.correction[name])
        self.lr_sum += float(optimizer.param_groups[0]["lr"])

    def on_train_end(self, trainer: L.Trainer, pl_module: CausalLMModule) -> None:
        end = {n: p.detach().to("cpu", torch.float32) for n, p in pl_module.trainable_parameters().items()}
        own, control = {n: t.float() for n, t in self.own.items()}, {n: t.float() for n, t in self.control.items()}
        if self.lr_sum > 0:
            new = OrderedDict((n, own[n] - control[n] + (self.start[n] - end[n]) / self.lr_sum) for n in sorted(end))
        else:  # no step was taken: nothing was learnt about this client's drift
            new = OrderedDict((n, own[n]) for n in sorted(end))
        self.new, self.change = new, OrderedDict((n, new[n] - own[n]) for n in new)

    def shape_reply(self, reply: FitRes) -> None:
        if self.change is None:
            raise RuntimeError(f"client '{self.client_id}': the fit ended before SCAFFOLD saw its end")
        self.store.save(self.server_round, self.new)
        reply.mods[NAME] = {"change": to_bytes(self.change)}


def drift_correction(fit: FitContext) -> DriftCorrection | None:
    """When the server side sent its control variate (``mods.scaffold.control``)."""
    settings = fit.settings(NAME)
    if settings is None:
        return None
    store = RoundStore(fit.app.state_directory(fit.ins.run_id), "scaffold_control")
    return DriftCorrection(fit.client_id, from_bytes(settings["control"]), store.load(before=fit.server_round),
                           store, fit.server_round)
