"""A client's ownership watermark embedded while it trains (FedIPR): the sign loss on its key's positions and its
trigger examples mixed into the batches. Nothing about it leaves the client: no metric, no key."""

from __future__ import annotations

import logging

import lightning as L
import torch

from fedlit.client.fit_context import ClientMod, FitContext
from fedlit.data.datamodule import IGNORE_INDEX, CausalLMCollator
from fedlit.lightning_modules.causal_lm import CausalLMModule
from fedlit.privacy.party_secret import PartySecret
from fedlit.watermark.key import WatermarkKey, load_or_make_key
from fedlit.watermark.signature import imprint, marked_values, sign_loss

log = logging.getLogger(__name__)


def trigger_examples(key: WatermarkKey) -> list[dict[str, list[int]]]:
    """The key's trigger prompts followed by their targets; only the targets are labelled."""
    return [{"input_ids": trigger + target, "labels": [IGNORE_INDEX] * len(trigger) + target}
            for trigger, target in zip(key.triggers, key.targets, strict=True)]


class WatermarkEmbedding(ClientMod):
    """Embeds ``key`` into the module's trainable parameters during the fit.

    The sign loss's gradient (times ``weight``) is added to the marked parameters' gradients once per optimiser
    step, as if it were part of the loss (it does not depend on the data, so accumulation does not scale it).
    Each training example is swapped for a random trigger example with probability ``rate``. With ``enforce``,
    every marked weight gets its sign when training ends (before the update is extracted), with a magnitude drawn
    like its neighbours' (:func:`~fedlit.watermark.signature.imprint`), so the update does not show the key.

    Args:
        key: the client's key.
        weight: the sign loss's weight.
        rate: the trigger examples' share of the training examples (0: none).
        enforce: impose the key's signs on the marked weights when training ends.
        secret: the key holder's own secret: it draws which examples are swapped and the imprinted magnitudes, so
            the server predicts neither (default: a fresh one from OS entropy).
        server_round: the fit's round (each round swaps other examples).
        pad_token_id: pads a batch that a trigger example makes longer.
    """

    def __init__(self, key: WatermarkKey, weight: float = 1.0, rate: float = 0.0, enforce: bool = False,
                 secret: PartySecret | None = None, server_round: int = 0, pad_token_id: int = 0) -> None:
        self.key, self.weight, self.rate, self.enforce = key, weight, rate, enforce
        self.collate = CausalLMCollator(pad_token_id)
        self.examples = trigger_examples(key) if rate > 0 and key.triggers else []
        self.secret = secret if secret is not None else PartySecret.fresh(key.owner)
        self.generator = self.secret.torch("watermark-triggers", server_round)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: CausalLMModule, batch: dict[str, torch.Tensor],
                             batch_idx: int) -> None:
        if not self.examples:
            return
        size = batch["input_ids"].shape[0]
        swapped = (torch.rand(size, generator=self.generator) < self.rate).tolist()
        picks = torch.randint(0, len(self.examples), (size,), generator=self.generator).tolist()
        if not any(swapped):
            return
        rows = [self.examples[pick] if swap else _row(batch, i) for i, (swap, pick) in enumerate(zip(swapped, picks,
                                                                                                    strict=True))]
        device = batch["input_ids"].device
        batch.update({name: tensor.to(device) for name, tensor in self.collate(rows).items()})

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: CausalLMModule, optimizer) -> None:
        if not self.key.signature:
            return
        parameters = dict(pl_module.model.named_parameters())
        marked = [parameters[p.parameter] for p in self.key.signature]
        with torch.enable_grad():
            values, signs = marked_values(parameters, self.key.signature)
            grads = torch.autograd.grad(self.weight * sign_loss(values, signs, self.key.gamma), marked)
        for param, grad in zip(marked, grads, strict=True):
            param.grad = grad if param.grad is None else param.grad.add_(grad)

    def on_train_end(self, trainer: L.Trainer, pl_module: CausalLMModule) -> None:
        if self.enforce and self.key.signature:
            quantiles = self.secret.torch("watermark-imprint")  # the same every fit: a mark moves with its neighbours
            imprint(dict(pl_module.model.named_parameters()), self.key.signature, quantiles, self.key.gamma)


def _row(batch: dict[str, torch.Tensor], i: int) -> dict[str, list[int]]:
    """Row ``i`` of a right-padded batch, without its padding."""
    length = int(batch["attention_mask"][i].sum())
    return {"input_ids": batch["input_ids"][i, :length].tolist(), "labels": batch["labels"][i, :length].tolist()}


def watermark_embedding(fit: FitContext) -> WatermarkEmbedding | None:
    """For a client that the party's own ``watermark`` settings choose: its key (drawn from the module and written on
    first use; the server sends nothing), which examples it swaps for triggers drawn from the client's secret."""
    config = fit.app.watermark
    if config is None:
        return None
    key_path = fit.app.watermark_key_path()
    new = not key_path.is_file()
    module = fit.module
    key = load_or_make_key(key_path, fit.client_id, module.model, module.trainable_state_dict(), config,
                           module.tokenizer)
    if new:
        log.info("client '%s' drew its watermark key: %s", fit.client_id, key_path)
    signature, trigger = config.signature, config.trigger
    pad = module.tokenizer.pad_token_id if module.tokenizer is not None else 0
    return WatermarkEmbedding(key, signature.weight if signature else 0.0, trigger.rate if trigger else 0.0,
                              signature is not None and signature.enforce, fit.secret, fit.server_round, pad)
