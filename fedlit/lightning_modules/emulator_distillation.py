"""Server-side emulator distillation (Offsite-Tuning's "NLD" emulator): the layer-dropped middle learns to
reproduce the full middle's output on the owner's public data, so adapters tuned against it transfer."""

from __future__ import annotations

import lightning as L
import torch
from transformers import PreTrainedModel

from fedlit.models.offsite import OffsiteConfig, adapter_indices, decoder_blocks


class EmulatorDistillation(L.LightningModule):
    """Mean-squared error between the hidden states entering the top adapter blocks, emulator vs full model.

    Only the emulator's middle blocks train; the full model and the adapter blocks stay frozen.
    """

    def __init__(self, full: PreTrainedModel, emulator: PreTrainedModel, plan: list[int], offsite: OffsiteConfig,
                 lr: float = 1e-4) -> None:
        super().__init__()
        self.full, self.emulator, self.lr = full.requires_grad_(False), emulator, lr
        self.full_index = full.config.num_hidden_layers - offsite.back
        self.emulator_index = len(plan) - offsite.back
        _, blocks = decoder_blocks(emulator)
        adapters = set(adapter_indices(plan, offsite))
        emulator.requires_grad_(False)
        for i, block in enumerate(blocks):
            block.requires_grad_(i not in adapters)

    def on_fit_start(self) -> None:
        self.full.eval()
        self.emulator.train()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                  "output_hidden_states": True}
        with torch.no_grad():
            target = self.full(**inputs).hidden_states[self.full_index]
        got = self.emulator(**inputs).hidden_states[self.emulator_index]
        mask = batch["attention_mask"].unsqueeze(-1).to(got.dtype)
        loss = ((got.float() - target.float()) ** 2 * mask).sum() / (mask.sum() * got.shape[-1])
        self.log("distill_loss", loss, on_step=True, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in self.emulator.parameters() if p.requires_grad], lr=self.lr)
