"""The client side of a learning rate set by the server round by round
(:class:`~fedlit.strategies.CosineRoundLR`): the optimiser's learning rate, and its scheduler's base, set to the
round's before the first step."""

from __future__ import annotations

import lightning as L

from fedlit.client.fit_context import ClientMod, FitContext
from fedlit.lightning_modules.causal_lm import CausalLMModule

NAME = "round_lr"


class RoundLearningRate(ClientMod):
    """Sets every parameter group's ``lr`` (and each step scheduler's base rate, which it scales) to ``lr``."""

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def on_train_start(self, trainer: L.Trainer, pl_module: CausalLMModule) -> None:
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] = self.lr
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            scheduler.base_lrs = [self.lr] * len(scheduler.base_lrs)
            scheduler.last_epoch -= 1
            scheduler.step()  # (the first step's rate from the new base)


def round_learning_rate(fit: FitContext) -> RoundLearningRate | None:
    """When the server side set this round's learning rate (``mods.round_lr``)."""
    settings = fit.settings(NAME)
    return None if settings is None else RoundLearningRate(float(settings["lr"]))
