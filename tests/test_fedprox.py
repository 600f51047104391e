"""FedProx's gradient equals the proximal term's, and pulls a client toward the global adapter."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedlit.callbacks import FedProx


class Linear(L.LightningModule):
    """loss = <w, x>: its gradient is x, so the proximal part of each step can be written by hand."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))

    def training_step(self, batch, batch_idx):
        return (self.w * batch[0][0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(mu, steps=3, accumulate=1):
    x = torch.tensor([[0.3, 0.2, -1.0]]).repeat(steps * accumulate, 1)
    module = Linear()
    trainer = L.Trainer(max_steps=steps, accumulate_grad_batches=accumulate, callbacks=[FedProx(mu)],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, DataLoader(TensorDataset(x), batch_size=1))
    return module.w.detach()


def hand(mu, steps=3):
    anchor = torch.tensor([1.0, -2.0, 0.5])
    w, x = anchor.clone(), torch.tensor([0.3, 0.2, -1.0])
    for _ in range(steps):
        w = w - 0.1 * (x + mu * (w - anchor))
    return w


@pytest.mark.parametrize("mu", [0.0, 0.5, 2.0])
def test_fedprox_step_matches_proximal_gradient(mu):
    assert torch.allclose(fit(mu), hand(mu), atol=1e-6)


def test_fedprox_counts_once_per_optimizer_step_under_accumulation():
    # with accumulation the data gradient is averaged (same x each micro-batch), the proximal term added once
    assert torch.allclose(fit(1.0, accumulate=2), hand(1.0), atol=1e-6)


def test_negative_mu_rejected():
    with pytest.raises(ValueError, match="mu must be >= 0"):
        FedProx(-1)
