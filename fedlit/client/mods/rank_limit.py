"""A client of a lower LoRA rank than the global adapter's (the client side of
:class:`~fedlit.strategies.HeteroRank`): it receives the global factors' first r components (for FlexLoRA's
SVD-ordered factors the best rank-r approximation), trains only those in its module of the global rank (the others
held at zero), and sends back only those. Every client keeps the global scaling ``lora_alpha / r_max``, so the same
factors mean the same weight change at every rank."""

from __future__ import annotations

import lightning as L
import torch

from fedlit.backends.messages import FitRes
from fedlit.client.fit_context import ClientMod, FitContext
from fedlit.lightning_modules.causal_lm import CausalLMModule
from fedlit.payload import Payload, changes_to_bytes
from fedlit.strategies.lora_factors import lora_pairs, max_rank, padded_to, share_of_rank

NAME = "lora_rank"


class RankLimit(ClientMod):
    """Zeroes the components from ``rank`` on when training starts, and their gradients before every step (so
    they stay zero, under AdamW's decay too). The reply is the trained components of the client's rank as changes
    from the ``share`` the server sent (first in the chain, it reads the trained weights before
    any other mod acts on them)."""

    END_STATE = ("trained",)

    def __init__(self, client_id: str, rank: int, share: Payload) -> None:
        self.client_id, self.rank, self.share = client_id, rank, share
        self.factors: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.trained: Payload | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: CausalLMModule) -> None:
        params = pl_module.trainable_parameters()
        pairs = lora_pairs(list(params))
        if not pairs:
            raise ValueError(f"client '{self.client_id}': a LoRA rank was set but its adapter has no LoRA factors")
        self.factors = [(params[a], params[b]) for a, b in pairs.items()]  # (found once: every step zeroes them)
        with torch.no_grad():
            for a, b in self.factors:
                if self.rank > a.shape[0]:
                    raise ValueError(f"client '{self.client_id}': rank {self.rank} exceeds the adapter's {a.shape[0]}")
                a[self.rank:] = 0
                b[:, self.rank:] = 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: CausalLMModule, optimizer) -> None:
        for a, b in self.factors:
            if a.grad is not None:
                a.grad[self.rank:] = 0
            if b.grad is not None:
                b.grad[:, self.rank:] = 0

    def on_train_end(self, trainer: L.Trainer, pl_module: CausalLMModule) -> None:
        self.factors = []  # (the shared model's parameters: not held past the fit)

    def on_fit_end(self, trainer: L.Trainer, pl_module: CausalLMModule) -> None:
        self.trained = share_of_rank(pl_module.trainable_state_dict(), self.rank)

    def shape_reply(self, reply: FitRes) -> None:
        if self.trained is not None:  # (a fit that never ended: the adapter extraction names it)
            reply.wire = changes_to_bytes(self.trained, self.share)


def rank_limit(fit: FitContext) -> RankLimit | None:
    """When the server side sent the clients' ranks (``mods.lora_rank``)."""
    settings = fit.settings(NAME)
    if settings is None:
        return None
    rank = settings["ranks"].get(fit.client_id, settings["default"])
    if rank is None:
        raise ValueError(f"client '{fit.client_id}': the server sent no LoRA rank for it")
    share = fit.global_payload
    sent = max_rank(share)
    if sent != int(rank):
        raise ValueError(f"client '{fit.client_id}': rank {rank}, but the server sent factors of rank {sent}")
    fit.global_payload = padded_to(share, max_rank(fit.module.trainable_parameters()))  # (what the module loads)
    return RankLimit(fit.client_id, int(rank), share)
