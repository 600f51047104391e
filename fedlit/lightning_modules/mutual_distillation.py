"""Mutual distillation (FedCoLLM's server step, after Deep Mutual Learning): two causal LMs train together on
the same batches, each on the labels and on the other's temperature-softened logits, so knowledge flows
both ways. A side with no trainable parameters is only a teacher: with the large model frozen, this is
plain one-way distillation, which is how FedCoLLM initialises the small model from the large one."""

from __future__ import annotations

import lightning as L
import torch

from fedlit.lightning_modules.causal_lm import CausalLMModule
from fedlit.lightning_modules.knowledge_distillation import (
    DistillationLossConfig,
    check_shared_vocabulary,
    distillation_loss,
)


class MutualDistillation(L.LightningModule):
    """``llm`` and ``slm`` each minimise the :class:`DistillationLossConfig` mix of CE and KL to the other
    (detached); the step's loss is their sum, so each model's gradient comes from its own term only.

    Logs ``{llm,slm}_{loss,ce,kd}`` for each side that trains. Wrapping :class:`CausalLMModule`\\ s (not bare
    models) keeps what their ``forward`` does, e.g. dropping prompt-tuning's virtual-token positions.
    """

    def __init__(self, llm: CausalLMModule, slm: CausalLMModule, loss: DistillationLossConfig | None = None,
                 lr: float = 1e-4) -> None:
        super().__init__()
        check_shared_vocabulary(slm.model, llm.model, names=("SLM", "LLM"))
        self.llm, self.slm = llm, slm
        self.loss_config = loss or DistillationLossConfig()
        self.lr = lr

    def on_fit_start(self) -> None:
        self.train()  # shared models come back from evaluation in eval mode (see CausalLMModule.on_fit_start)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = {"llm": self.llm(batch), "slm": self.slm(batch)}
        total = torch.zeros((), device=batch["input_ids"].device)
        for student, teacher in (("llm", "slm"), ("slm", "llm")):
            if not logits[student].requires_grad:  # a frozen side is only a teacher
                continue
            loss, ce, kd = distillation_loss(logits[student], logits[teacher], batch["labels"], self.loss_config)
            self.log_dict({f"{student}_loss": loss, f"{student}_ce": ce, f"{student}_kd": kd},
                          on_step=True, on_epoch=True, batch_size=batch["input_ids"].shape[0])
            total = total + loss
        return total

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("mutual distillation: neither model has trainable parameters")
        return torch.optim.AdamW(params, lr=self.lr)
