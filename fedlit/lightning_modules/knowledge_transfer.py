"""FedMKT's two training sides: a client's small LM (SLM) that learns from its private data and from the server
LLM's knowledge on public texts, and the server LLM that learns from the clients' knowledge on the same texts.
Only knowledge travels (plus, in the homogeneous mode, the SLM adapter for FedAvg)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from peft import PeftModel
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerBase

from fedlit.data.public import PublicDataConfig
from fedlit.lightning_modules.causal_lm import EvaluationConfig, OptimizerConfig, shifted_token_loss
from fedlit.lightning_modules.knowledge_distillation import DistillationLossConfig
from fedlit.lightning_modules.peft_module import PeftModule
from fedlit.lightning_modules.public_knowledge import (
    PREFIX,
    Knowledge,
    KnowledgeBridge,
    PublicTeacher,
    PublicTexts,
    dual_min_selection,
    knowledge_of,
)
from fedlit.payload import Payload, canonical, check_compatible, split


@dataclass
class KnowledgeTransferConfig(PublicDataConfig):
    """The public texts both sides predict on, what travels, and the server's distillation; the data fields are
    :class:`~fedlit.data.public.PublicDataConfig`'s (``max_length``: the longest public text in tokens, for every
    tokenizer; longer texts are left out by their length in characters).

    Args:
        response_template: the part of each public text that is knowledge (``str.format`` over the record, appended
            to ``template``'s text): only its tokens' predictions travel and count in the cross-entropies, as the
            loss covers responses only in instruction data ("": the whole text).
        examples: public texts used, spread evenly over those that fit.
        top_k: logits per position that travel.
        server_steps: the LLM's distillation steps per round (0: the LLM only teaches).
        server_lr: its AdamW learning rate.
        public_batch_size: public texts in each client step's distillation batch.
    """

    response_template: str = ""
    examples: int = 256
    top_k: int = 16
    server_steps: int = 8
    server_lr: float = 1e-3
    public_batch_size: int = 8

    def __post_init__(self) -> None:
        for key in ("examples", "top_k", "public_batch_size", "max_length"):
            if getattr(self, key) < 1:
                raise ValueError(f"transfer.{key} must be >= 1, got {getattr(self, key)}")
        if self.server_steps < 0 or self.server_lr < 0:
            raise ValueError(f"transfer.server_steps and server_lr must be >= 0, got {self.server_steps} and "
                             f"{self.server_lr}")


def checked_knowledge(module: PeftModule, public: PublicTexts, config: KnowledgeTransferConfig, who: str) -> Knowledge:
    """``module``'s knowledge on the public texts, checked finite before it travels."""
    was_training = module.training
    module.eval()
    knowledge = knowledge_of(module, public, config.top_k, config.public_batch_size)
    module.train(was_training)
    knowledge.check_finite(who)
    return knowledge


class KnowledgeTransferModule(PeftModule):
    """A FedMKT client's SLM. Each step: its loss on a private batch, mixed by ``loss.kd_weight`` with top-k
    distillation from the LLM's knowledge on a batch of the public texts where the LLM's cross-entropy is lower
    than the SLM's own at the start of the fit. What travels (:meth:`trainable_state_dict`) is its own knowledge
    after the fit, plus its adapter when ``share_adapter`` (homogeneous FedAvg); otherwise the adapter is the
    client's own (:meth:`personal_state_dict`), kept where it runs. Where the server does not learn from the clients
    (``sends_knowledge`` false: ``llm_to_slm``), the knowledge it received goes back unchanged: no pass over the
    public texts after the fit, and nothing of it on the wire (only changes travel).
    """

    def __init__(self, model: PeftModel, public: PublicTexts, bridge: KnowledgeBridge,
                 config: KnowledgeTransferConfig, loss: DistillationLossConfig, share_adapter: bool,
                 initial_adapter: Payload, optimizer: OptimizerConfig | None = None,
                 evaluation: EvaluationConfig | None = None, tokenizer: PreTrainedTokenizerBase | None = None,
                 sends_knowledge: bool = True) -> None:
        super().__init__(model, optimizer, evaluation, tokenizer)
        self.public, self.bridge, self.config, self.loss_config = public, bridge, config, loss
        self.share_adapter, self.initial_adapter, self.sends_knowledge = share_adapter, initial_adapter, sends_knowledge
        self.received: Knowledge | None = None
        self.teacher: PublicTeacher | None = None

    def personal_state_dict(self) -> Payload | None:
        """The adapter the client keeps between rounds (``None`` when it is federated instead)."""
        return None if self.share_adapter else super().trainable_state_dict()

    def load_personal_state_dict(self, state: Payload | None) -> None:
        """The client's own adapter, or the initial one on its first fit."""
        if not self.share_adapter:
            super().load_trainable_state_dict(state if state is not None else self.initial_adapter,
                                              who="the client's own adapter")

    def trainable_state_dict(self) -> Payload:
        knowledge = (self.received if not self.sends_knowledge and self.received is not None
                     else checked_knowledge(self, self.public, self.config, "the client's public knowledge"))
        adapter = super().trainable_state_dict() if self.share_adapter else {}
        return canonical({**knowledge.payload(), **adapter})

    def load_trainable_state_dict(self, payload: Payload, who: str = "client") -> None:
        knowledge, adapter = split(payload, PREFIX)
        expected = Knowledge.empty(len(self.public), self.public.input_ids.shape[1], self.config.top_k).payload()
        check_compatible(expected, knowledge, who)
        self.received = Knowledge.from_payload(knowledge)
        if self.share_adapter:
            super().load_trainable_state_dict(adapter, who)

    def on_fit_start(self) -> None:
        if self.received is None:
            raise RuntimeError("a FedMKT client fits only after receiving the LLM's knowledge")
        own = checked_knowledge(self, self.public, self.config, "the client's public knowledge")
        carried = self.bridge.carry(self.received)
        _, taught = dual_min_selection(own.ce, carried.ce[None])
        self.teacher = PublicTeacher(self.public, carried, taught)
        super().on_fit_start()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        ce, _ = shifted_token_loss(self(batch), batch["labels"])
        taught = self.teacher.taught.nonzero().flatten()
        size = batch["input_ids"].shape[0]
        if len(taught):
            indices = taught[torch.randint(len(taught), (self.config.public_batch_size,))]
            kd = self.teacher.loss(self(self.public.batch(indices, self.device)), indices, self.loss_config.temperature)
            loss = self.loss_config.mix(ce, kd)
            self.log("train_kd", kd, on_step=True, on_epoch=True, batch_size=size)
        else:
            loss = ce
        self.log_dict({"train_ce": ce, "train_loss": loss, "train_taught": float(len(taught))}, on_step=True,
                      on_epoch=True, batch_size=size)
        return loss


class PublicDistillation(L.LightningModule):
    """The server LLM's step: on batches of public texts (``indices`` from the dataloader), its loss on the text
    mixed by ``loss.kd_weight`` with top-k distillation from ``teacher`` on the texts it teaches."""

    def __init__(self, student: PeftModule, teacher: PublicTeacher, loss: DistillationLossConfig, lr: float) -> None:
        super().__init__()
        self.student, self.teacher, self.loss_config, self.lr = student, teacher, loss, lr

    def on_fit_start(self) -> None:
        self.train()

    def training_step(self, indices: torch.Tensor, batch_idx: int) -> torch.Tensor:
        batch = self.teacher.public.batch(indices.cpu(), self.device)
        logits = self.student(batch)
        ce, _ = shifted_token_loss(logits, batch["labels"])
        kd = self.teacher.loss(logits, indices.cpu(), self.loss_config.temperature)
        loss = self.loss_config.mix(ce, kd)
        self.log_dict({"llm_loss": loss, "llm_ce": ce, "llm_kd": kd}, on_step=True, on_epoch=True,
                      batch_size=len(indices))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in self.student.parameters() if p.requires_grad], lr=self.lr)


class KnowledgeRecord(L.LightningModule):
    """The loop's view of FedMKT's global state: the LLM's knowledge (plus the FedAvg'd SLM adapter in the
    homogeneous mode), saved as ``adapter/knowledge.safetensors`` at the end."""

    def __init__(self, payload: Payload) -> None:
        super().__init__()
        self.payload = payload

    def trainable_state_dict(self) -> Payload:
        return canonical(self.payload)

    def load_trainable_state_dict(self, payload: Payload, who: str = "server") -> None:
        check_compatible(self.payload, payload, who)
        self.payload = canonical(payload)

    def save_adapter(self, directory: str | Path) -> None:
        save_file(dict(self.payload), str(Path(directory) / "knowledge.safetensors"))
