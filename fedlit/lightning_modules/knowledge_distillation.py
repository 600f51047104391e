"""Knowledge distillation into a PEFT student (FedHeteroLLM's mentee, FedCoLLM's SLM): the loss mixes
cross-entropy on the labels with the KL divergence to a frozen teacher's temperature-softened logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedlit.data.datamodule import IGNORE_INDEX
from fedlit.data.public import PublicDataConfig
from fedlit.lightning_modules.causal_lm import EvaluationConfig, OptimizerConfig, shifted_token_loss
from fedlit.lightning_modules.peft_module import PeftModule


@dataclass
class DistillationLossConfig:
    """loss = (1 - kd_weight) * CE(labels) + kd_weight * T^2 * KL(teacher_T || student_T).

    Args:
        kd_weight: weight of the distillation term, in [0, 1].
        temperature: softens both distributions; T^2 keeps the gradient scale independent of T (Hinton et al.).
    """

    kd_weight: float = 0.5
    temperature: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.kd_weight <= 1 or self.temperature <= 0:
            raise ValueError(f"distillation: kd_weight must be in [0, 1] and temperature > 0, "
                             f"got {self.kd_weight} and {self.temperature}")

    def mix(self, ce: torch.Tensor, kd: torch.Tensor) -> torch.Tensor:
        return (1 - self.kd_weight) * ce + self.kd_weight * kd


@dataclass
class DistillationConfig(PublicDataConfig):
    """A server-side distillation on public data (off with ``steps: 0``); the data fields are
    :class:`~fedlit.data.public.PublicDataConfig`'s.

    Args:
        steps: optimiser steps of the server-side Trainer (per round where it runs every round).
        lr: AdamW learning rate of what trains.
    """

    steps: int = 0
    lr: float = 1e-4


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the labelled next-token positions."""
    mask = labels[:, 1:] != IGNORE_INDEX
    student = F.log_softmax(student_logits[:, :-1][mask].float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits[:, :-1][mask].float() / temperature, dim=-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="sum") / mask.sum().clamp(min=1)
    return kl * temperature**2


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      config: DistillationLossConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, ce, kd): the student's CE on ``labels`` mixed with its KL to the (detached) teacher."""
    ce, _ = shifted_token_loss(student_logits, labels)
    kd = distillation_kl(student_logits, teacher_logits.detach(), labels, config.temperature)
    return config.mix(ce, kd), ce, kd


def check_shared_vocabulary(student: PreTrainedModel | int, teacher: PreTrainedModel | int,
                            names: tuple[str, str] = ("student", "teacher")) -> None:
    """Logit distillation compares distributions token by token: both models need the same vocabulary (models,
    or their vocabulary sizes when a model is not loaded here)."""
    (student_size, teacher_size) = (m if isinstance(m, int) else m.get_input_embeddings().num_embeddings
                                    for m in (student, teacher))
    if student_size != teacher_size:
        raise ValueError(f"distillation needs {names[1]} and {names[0]} to share the tokenizer vocabulary; the "
                         f"{names[0]} has {student_size} token embeddings, the {names[1]} {teacher_size}")


def check_same_tokenizer(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase,
                         names: tuple[str, str] = ("student", "teacher")) -> None:
    """Equal embedding sizes are not enough: token i must be the same token for both models. Compare the token ->
    id maps and the special tokens, naming the first differences."""
    vocab = student.get_vocab(), teacher.get_vocab()
    differing = sorted((t for t in set(vocab[0]) | set(vocab[1]) if vocab[0].get(t) != vocab[1].get(t)),
                       key=lambda t: (min(v.get(t, 1 << 62) for v in vocab), t))
    if differing:
        shown = "; ".join(f"{t!r} is {vocab[0].get(t, 'absent')} in the {names[0]}'s, {vocab[1].get(t, 'absent')} "
                          f"in the {names[1]}'s" for t in differing[:3])
        raise ValueError(f"distillation needs {names[1]} and {names[0]} to share one tokenizer, but "
                         f"{len(differing)} tokens differ: {shown}")
    for role in ("bos_token", "eos_token", "unk_token"):
        if getattr(student, role) != getattr(teacher, role):
            raise ValueError(f"distillation needs {names[1]} and {names[0]} to share one tokenizer, but their "
                             f"{role} differs: {getattr(student, role)!r} vs {getattr(teacher, role)!r}")


class KnowledgeDistillationModule(PeftModule):
    """A :class:`PeftModule` student trained against a frozen ``teacher``; only the student's adapter travels."""

    def __init__(
        self,
        model: PeftModel,
        teacher: PreTrainedModel,
        loss: DistillationLossConfig | None = None,
        optimizer: OptimizerConfig | None = None,
        evaluation: EvaluationConfig | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        super().__init__(model, optimizer, evaluation, tokenizer)
        check_shared_vocabulary(model, teacher)
        # Not a registered submodule: it stays out of train() and out of the module's state and checkpoints.
        object.__setattr__(self, "teacher", teacher.requires_grad_(False).eval())
        self.loss_config = loss or DistillationLossConfig()

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.teacher.to(self.device)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, ce, kd = distillation_loss(logits, teacher_logits, batch["labels"], self.loss_config)
        size = batch["input_ids"].shape[0]
        self.log_dict({"train_ce": ce, "train_kd": kd}, on_step=True, on_epoch=True, batch_size=size)
        self.log("train_loss", loss, on_step=True, on_epoch=True, batch_size=size)
        return loss
