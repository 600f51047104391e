"""FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020) as a client callback."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class FedProx(Callback):
    """Adds the proximal term (mu / 2) * ||w - w_global||^2 to the local objective.

    Its gradient, mu * (w - w_global), is added to each trainable parameter's gradient once per optimiser
    step (after gradient accumulation), so the client's loss code stays untouched. ``w_global`` is the
    adapter the client received this round (loaded by AdapterExtraction at fit start).
    """

    def __init__(self, mu: float = 0.01) -> None:
        if mu < 0:
            raise ValueError(f"FedProx mu must be >= 0, got {mu}")
        self.mu = mu
        self.anchor: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.anchor = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        for name, param in pl_module.named_parameters():
            if param.grad is not None and name in self.anchor:
                param.grad.add_(param.detach() - self.anchor[name], alpha=self.mu)
