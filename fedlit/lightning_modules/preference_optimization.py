"""Direct preference optimisation (Rafailov et al. 2023) of a peft adapter: the reference policy is the frozen base
itself, read with the adapter switched off (peft's ``disable_adapter``), so no second copy of the model is held."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn
from torchmetrics import MeanMetric
from transformers import PreTrainedTokenizerBase

from fedlit.data.datamodule import IGNORE_INDEX
from fedlit.data.preferences import split_pairs
from fedlit.lightning_modules.causal_lm import OptimizerConfig
from fedlit.lightning_modules.peft_module import PeftModule

# what training logs (train_<name>) and validation measures (val_<name>) besides the loss, per pair
PAIR_METRICS = ("reward_accuracy", "reward_margin", "logp_chosen", "logp_rejected", "preference_accuracy")


@dataclass
class DPOConfig:
    """The DPO loss.

    Args:
        beta: how far the policy may move from the reference (the KL weight; 0.1 as in the paper's dialogue runs).
        label_smoothing: the share of pairs assumed mislabelled (conservative DPO, cDPO): 0 is plain DPO.
    """

    beta: float = 0.1
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.beta) or self.beta <= 0:
            raise ValueError(f"dpo.beta must be a finite number > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"dpo.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")


def sequence_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sequence, the sum of the log-probabilities of its labelled tokens (each predicted from those before);
    only labelled positions are scored, so no [batch, length, vocab] log-softmax is held."""
    targets = labels[:, 1:]
    labelled = targets != IGNORE_INDEX
    token_log_probs = -F.cross_entropy(logits[:, :-1][labelled].float(), targets[labelled], reduction="none")
    totals = torch.zeros(len(labels), dtype=token_log_probs.dtype, device=token_log_probs.device)
    return totals.index_add(0, labelled.nonzero()[:, 0], token_log_probs)


def dpo_losses(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
               reference_rejected: torch.Tensor, config: DPOConfig) -> tuple[torch.Tensor, ...]:
    """Per pair: the DPO loss ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))`` (with label smoothing
    ``eps``: ``(1 - eps)`` of it plus ``eps`` times the loss of the swapped pair), and the implicit rewards
    ``beta * (pi - ref)`` of the chosen and the rejected answer (no gradient)."""
    chosen_ratio, rejected_ratio = policy_chosen - reference_chosen, policy_rejected - reference_rejected
    margin = config.beta * (chosen_ratio - rejected_ratio)
    eps = config.label_smoothing
    losses = -(1 - eps) * F.logsigmoid(margin) - eps * F.logsigmoid(-margin)
    return losses, config.beta * chosen_ratio.detach(), config.beta * rejected_ratio.detach()


class DPOModule(PeftModule):
    """A client's DPO over batches of :class:`~fedlit.data.preferences.PreferenceCollator` pairs: one forward pass
    of the policy over chosen and rejected answers together, one without gradient with the adapter disabled (the
    reference). Logs and validates the loss, the reward accuracy (the chosen answer's implicit reward higher) and
    margin, the policy's log-probabilities of both answers, and its preference accuracy (the chosen answer more
    likely than the rejected one: comparable with any model, the base or an SFT adapter included)."""

    def __init__(self, model: PeftModel, optimizer: OptimizerConfig | None = None, dpo: DPOConfig | None = None,
                 tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        super().__init__(model, optimizer, tokenizer=tokenizer)
        self.dpo = dpo or DPOConfig()
        self.val_pair_metrics = nn.ModuleDict({name: MeanMetric() for name in PAIR_METRICS})

    def reference_log_probs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each sequence's log-probability under the base model: the adapter switched off, nothing else held."""
        with torch.no_grad(), self.model.disable_adapter():
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            return sequence_log_probs(logits, batch["labels"])

    def pair_measures(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per pair: the losses, and every :data:`PAIR_METRICS` value."""
        reference = split_pairs(self.reference_log_probs(batch))
        policy_chosen, policy_rejected = split_pairs(sequence_log_probs(self(batch), batch["labels"]))
        losses, chosen_reward, rejected_reward = dpo_losses(policy_chosen, policy_rejected, *reference, self.dpo)
        return losses, {"reward_accuracy": (chosen_reward > rejected_reward).float(),
                        "reward_margin": chosen_reward - rejected_reward,
                        "logp_chosen": policy_chosen.detach(), "logp_rejected": policy_rejected.detach(),
                        "preference_accuracy": (policy_chosen > policy_rejected).float().detach()}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses, measures = self.pair_measures(batch)
        loss = losses.mean()
        pairs = len(losses)
        self.log("train_loss", loss, on_step=True, on_epoch=True, batch_size=pairs)
        for name, values in measures.items():
            self.log(f"train_{name}", values.mean(), on_step=False, on_epoch=True, batch_size=pairs)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        losses, measures = self.pair_measures(batch)
        self.val_loss.update(losses)
        self.log("val_loss", self.val_loss, on_epoch=True)
        for name, values in measures.items():
            self.val_pair_metrics[name].update(values)
            self.log(f"val_{name}", self.val_pair_metrics[name], on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        """Nothing more: a DPO loss has no perplexity."""
