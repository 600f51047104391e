"""Local training of one client: a causal LM whose trainable parameters are the federated state."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torchmetrics import MeanMetric
from transformers import PreTrainedTokenizerBase, get_scheduler

from fedlit.data.datamodule import IGNORE_INDEX
from fedlit.lightning_modules.choices import choice_log_likelihoods, choice_token_ids, reference_indices
from fedlit.lightning_modules.generation import exact_matches, greedy_answers, split_prompts
from fedlit.payload import Payload, canonical, check_compatible


@dataclass
class OptimizerConfig:
    """AdamW (or plain SGD) over the trainable parameters, with any ``transformers`` schedule.

    Args:
        lr: peak learning rate.
        weight_decay: weight decay (AdamW's decoupled one; for SGD, L2 on the gradient).
        scheduler: a ``transformers.get_scheduler`` name (constant, linear, cosine, ...).
        warmup_steps: linear warm-up steps of the schedule.
        name: ``adamw``, or ``sgd`` (plain steps, as SCAFFOLD's and FedAvg's analyses assume).
    """

    lr: float = 2e-4
    weight_decay: float = 0.0
    scheduler: str = "constant"
    warmup_steps: int = 0
    name: Literal["adamw", "sgd"] = "adamw"

    def __post_init__(self) -> None:
        if self.name not in ("adamw", "sgd"):
            raise ValueError(f"optimizer.name must be adamw or sgd, got {self.name!r}")
        if not math.isfinite(self.lr) or self.lr < 0:
            raise ValueError(f"optimizer.lr must be a finite number >= 0, got {self.lr}")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError(f"optimizer: weight_decay and warmup_steps must be >= 0, got {self.weight_decay} and "
                             f"{self.warmup_steps}")


def shifted_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over labelled positions, and how many positions that was."""
    targets = labels[:, 1:]
    loss = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    count = (targets != IGNORE_INDEX).sum()
    return loss / count.clamp(min=1), count


@dataclass
class EvaluationConfig:
    """What validation measures besides token-weighted loss, perplexity and next-token accuracy.

    Args:
        generate_max_new_tokens: when > 0, also answer each instruction example's prompt greedily (at most
            this many tokens) and report ``exact_match`` against its reference response. Needs
            ``tokenizer``.
        choices: a fixed answer set, each written as the response template writes it (e.g. ``" hamlet"``).
            When given, each instruction example's candidates are ranked by log-likelihood after its prompt
            and ``choice_accuracy`` is the share whose top candidate is the reference. Needs ``tokenizer``.
    """

    generate_max_new_tokens: int = 0
    choices: list[str] | None = None


class CausalLMModule(L.LightningModule):
    """Causal-LM loss with label masking; on validation, torchmetrics loss, perplexity, token accuracy and,
    optionally, generation exact match.

    ``model`` is typically shared by every simulated client of a process: the frozen base is held once and
    a client's own state is only its trainable tensors (see :meth:`trainable_state_dict`).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerConfig | None = None,
        evaluation: EvaluationConfig | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_config = optimizer or OptimizerConfig()
        self.evaluation = evaluation or EvaluationConfig()
        if (self.evaluation.generate_max_new_tokens or self.evaluation.choices) and tokenizer is None:
            raise ValueError("evaluation.generate_max_new_tokens and evaluation.choices need the tokenizer")
        self.tokenizer = tokenizer
        self.choice_ids = choice_token_ids(self.evaluation.choices, tokenizer) if self.evaluation.choices else []
        # Perplexity is exp(val_loss) and accuracy a mean over labelled tokens: both come from the labelled rows
        # of the logits, so no full [batch, seq, vocab] float copy, softmax or confusion count is needed.
        self.val_loss = MeanMetric()
        self.val_token_accuracy = MeanMetric()
        self.val_exact_match = MeanMetric()
        self.val_choice_accuracy = MeanMetric()

    def on_fit_start(self) -> None:
        # from_pretrained returns the shared model in eval mode and evaluation leaves it there; Lightning keeps
        # submodule modes as it finds them, so adapter dropout needs train mode switched on explicitly.
        self.train()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, count = shifted_token_loss(self(batch), batch["labels"])
        self.log("train_loss", loss, on_step=True, on_epoch=True, batch_size=batch["input_ids"].shape[0],
                 sync_dist=True)  # (on several ranks: their mean)
        return loss * self.token_share(count)

    def token_share(self, count: torch.Tensor) -> torch.Tensor | float:
        """1 on one device; on several, the ranks times this rank's share of the global batch's labelled tokens.
        DDP averages the ranks' gradients: scaled so, the ranks' token-mean losses average to the token mean over
        the global batch, the loss one process takes on it, however the tokens fall between the ranks."""
        ranks = self.trainer.world_size
        if ranks == 1:
            return 1.0
        total = self.trainer.strategy.reduce(count.float(), reduce_op="sum")
        return count * ranks / total.clamp(min=1)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch)
        targets = batch["labels"][:, 1:]
        labelled = targets != IGNORE_INDEX
        scored, wanted = logits[:, :-1][labelled], targets[labelled]  # [labelled tokens, vocab]
        if len(wanted):
            loss = F.cross_entropy(scored.float(), wanted, reduction="sum") / len(wanted)
            self.val_loss.update(loss, weight=len(wanted))
            self.val_token_accuracy.update((scored.argmax(-1) == wanted).float())
        self.log("val_loss", self.val_loss, on_epoch=True)
        self.log("val_token_accuracy", self.val_token_accuracy, on_epoch=True)
        if self.evaluation.generate_max_new_tokens or self.choice_ids:
            self._answer_metrics(batch)

    def on_validation_epoch_end(self) -> None:
        """Perplexity: exp of the token-weighted mean loss, as torchmetrics' ``Perplexity`` defines it."""
        self.log("val_perplexity", torch.exp(self.val_loss.compute()))

    def _answer_metrics(self, batch: dict[str, torch.Tensor]) -> None:
        """Task metrics on the prompts of instruction examples: generation exact match, answer-set accuracy."""
        prompts, answers = split_prompts(batch)
        if self.choice_ids:
            references = reference_indices(answers, self.choice_ids, self.tokenizer).to(batch["input_ids"].device)
            scores = choice_log_likelihoods(self, prompts, self.choice_ids, self.tokenizer.pad_token_id)
            self.val_choice_accuracy.update((scores.argmax(dim=1) == references).float())
            self.log("val_choice_accuracy", self.val_choice_accuracy, on_epoch=True)
        if self.evaluation.generate_max_new_tokens:
            predictions = greedy_answers(
                self.model, prompts, self.evaluation.generate_max_new_tokens,
                self.tokenizer.pad_token_id, self.tokenizer.eos_token_id,
            )
            self.val_exact_match.update(exact_matches(predictions, answers, self.tokenizer))
            self.log("val_exact_match", self.val_exact_match, on_epoch=True)

    def configure_optimizers(self):
        cfg = self.optimizer_config
        params = list(self.trainable_parameters().values())
        if not params:
            raise ValueError("the model has no trainable parameters: nothing to federate")
        optimizer = (torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay) if cfg.name == "adamw"
                     else torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay))
        scheduler = get_scheduler(
            cfg.scheduler, optimizer, num_warmup_steps=cfg.warmup_steps,
            num_training_steps=self.trainer.estimated_stepping_batches,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def trainable_parameters(self) -> OrderedDict[str, nn.Parameter]:
        """The parameters that train (and travel), by the names the payload gives them."""
        return OrderedDict((n, p) for n, p in self.model.named_parameters() if p.requires_grad)

    def trainable_state_dict(self) -> Payload:
        """What travels: every trainable parameter of the model, by name."""
        return canonical(self.trainable_parameters())

    def save_adapter(self, directory: str | Path) -> None:
        """Write the trainable tensors to ``directory/adapter_model.safetensors``."""
        save_file(dict(self.trainable_state_dict()), str(Path(directory) / "adapter_model.safetensors"))

    def load_trainable_state_dict(self, payload: Payload, who: str = "client") -> None:
        """Overwrite the trainable tensors with ``payload``; any key or shape mismatch raises, naming ``who``."""
        params = self.trainable_parameters()
        check_compatible(params, payload, who)
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(payload[name])
