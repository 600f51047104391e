"""FedKSeed's client (Qin et al., ICML 2024): zeroth-order steps along directions drawn from K shared seeds.

A step takes one seed of the run's K candidates, draws the direction ``z`` from it, and estimates the projected
gradient with two forward passes, ``g = (L(w + s z) - L(w - s z)) / 2s`` (no backward pass: inference-level
memory); the weights move by ``-lr * g * z``. Because the directions are shared, the model is fully described by
the initial weights and one accumulated coefficient per seed: ``w = w0 - lr * sum_j C_j z_j``. That K-vector is
what travels (the trainable state), so FedAvg of the clients' vectors is FedKSeed's aggregation, and every party
rebuilds the weights by replaying it from ``w0``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedlit.lightning_modules.causal_lm import CausalLMModule, EvaluationConfig, shifted_token_loss
from fedlit.payload import Payload, check_compatible, to_bytes

COEFFICIENTS = "fedkseed.coefficients"


@dataclass
class ZerothOrderConfig:
    """FedKSeed's settings.

    Args:
        seeds: K, the candidate seeds shared by every party for the whole run (drawn from ``seed``).
        lr: the step size along each direction.
        scale: the perturbation's size ``s`` in the two-point estimate.
        seed: draws the K candidate seeds.
        pro_alpha: FedKSeed-Pro: sample seed ``j`` with probability proportional to ``exp(pro_alpha * a_j)``,
            ``a_j`` the min-max normalised amplitude of its global coefficient (the paper's importance, from the
            accumulated coefficient rather than the mean amplitude of its gradients); ``None``: uniform.
    """

    seeds: int = 1024
    lr: float = 1e-3
    scale: float = 1e-3
    seed: int = 0
    pro_alpha: float | None = None

    def __post_init__(self) -> None:
        if self.seeds < 1 or not (math.isfinite(self.lr) and self.lr > 0 and math.isfinite(self.scale)
                                  and self.scale > 0):
            raise ValueError(f"zeroth_order: need seeds >= 1, lr > 0 and scale > 0, got {self.seeds}, {self.lr} "
                             f"and {self.scale}")

    def candidate_seeds(self) -> list[int]:
        return np.random.default_rng([self.seed, 0x5EED]).integers(0, 2**62, self.seeds).tolist()

    def probabilities(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Each seed's sampling probability given the global coefficients (uniform unless ``pro_alpha``)."""
        amplitude = coefficients.abs().double()
        spread = amplitude.max() - amplitude.min()
        if self.pro_alpha is None or spread == 0:
            return torch.full((self.seeds,), 1 / self.seeds, dtype=torch.float64)
        return torch.softmax(self.pro_alpha * (amplitude - amplitude.min()) / spread, dim=0)


def direction(tensors: Mapping[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The standard-normal direction of ``seed`` over ``tensors`` (by sorted name, drawn on CPU in float32, so every
    party and device draws the same numbers), shaped, typed and placed like each tensor."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(tensors[name].shape, generator=generator).to(tensors[name].device, tensors[name].dtype)
            for name in sorted(tensors)}


@torch.no_grad()
def move(tensors: Mapping[str, torch.Tensor], z: Mapping[str, torch.Tensor], coefficient: float) -> None:
    """``w += coefficient * z`` in place."""
    for name, values in z.items():
        tensors[name].add_(values, alpha=coefficient)


def step_along(tensors: Mapping[str, torch.Tensor], seed: int, coefficient: float) -> None:
    """``w += coefficient * z(seed)`` in place."""
    move(tensors, direction(tensors, seed), coefficient)


@torch.no_grad()
def replay(tensors: Mapping[str, torch.Tensor], seeds: list[int], steps: list[tuple[int, float]], lr: float) -> None:
    """Apply ``steps`` ((seed index, projected gradient) pairs) in order, as training applied them."""
    for index, gradient in steps:
        step_along(tensors, seeds[index], -lr * gradient)


class ZerothOrderModule(CausalLMModule):
    """A client of FedKSeed over any trainable parameters of ``model`` (a peft adapter, or the full model).

    Args:
        model: the model; its trainable parameters are what the directions move.
        config: K, lr, scale and the seeds' seed.
        initial: the trainable tensors every party starts from (``w0``), by name.
        evaluation, tokenizer: as for :class:`CausalLMModule`.
    """

    def __init__(self, model: nn.Module, config: ZerothOrderConfig, initial: Payload,
                 evaluation: EvaluationConfig | None = None, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        super().__init__(model, None, evaluation, tokenizer)
        self.automatic_optimization = False
        self.config, self.initial, self.seeds = config, initial, config.candidate_seeds()
        self.coefficients = torch.zeros(config.seeds, dtype=torch.float64)
        self.seed_probabilities = config.probabilities(self.coefficients)
        self.steps: list[tuple[int, float]] = []  # this fit's (seed index, projected gradient), in order

    def on_fit_start(self) -> None:
        self.model.eval()  # no dropout: both passes of an estimate must see the same function
        self.generator = torch.Generator().manual_seed(torch.initial_seed())  # the fit's seed picks the seeds
        self.steps = []

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return shifted_token_loss(self(batch), batch["labels"])[0]

    @torch.no_grad()
    def projected_gradient(self, batch: dict[str, torch.Tensor], z: Mapping[str, torch.Tensor]) -> tuple[float, float]:
        """``(L(w + s z) - L(w - s z)) / 2s`` along ``z``, and the mean of the two losses (the loss at ``w`` to second
        order); the weights are left exactly as they were."""
        params = self.trainable_parameters()
        saved = {name: p.detach().clone() for name, p in params.items()}
        move(params, z, self.config.scale)
        plus = float(self.loss(batch))
        move(params, z, -2 * self.config.scale)
        minus = float(self.loss(batch))
        for name, p in params.items():
            p.copy_(saved[name])
        return (plus - minus) / (2 * self.config.scale), (plus + minus) / 2

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        index = int(torch.multinomial(self.seed_probabilities, 1, generator=self.generator))
        params = self.trainable_parameters()
        z = direction(params, self.seeds[index])  # drawn once for both passes and the step (what replay redraws)
        gradient, loss = self.projected_gradient(batch, z)
        move(params, z, -self.config.lr * gradient)
        self.coefficients[index] += gradient
        self.steps.append((index, gradient))
        self.optimizers().step()  # counts the step for Lightning (max_steps); it moves nothing (lr 0)
        self.log("train_loss", loss, on_step=True, on_epoch=True, batch_size=batch["input_ids"].shape[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = list(self.trainable_parameters().values())
        if not params:
            raise ValueError("the model has no trainable parameters: nothing to federate")
        return torch.optim.SGD(params, lr=0.0)  # Lightning counts steps by optimiser steps; the update is ours

    def trainable_state_dict(self) -> Payload:
        """What travels: one coefficient per candidate seed (K floats, whatever the model's size)."""
        return Payload({COEFFICIENTS: self.coefficients.clone()})

    def load_trainable_state_dict(self, payload: Payload, who: str = "client") -> None:
        """Take the coefficients and rebuild the weights from ``w0`` by replaying them (seeds in index order)."""
        check_compatible(self.trainable_state_dict(), payload, who)
        self.coefficients = payload[COEFFICIENTS].to(torch.float64).clone()
        self.seed_probabilities = self.config.probabilities(self.coefficients)
        params = self.trainable_parameters()
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.initial[name])
        used = self.coefficients.nonzero().flatten().tolist()
        replay(params, self.seeds, [(j, float(self.coefficients[j])) for j in used], self.config.lr)

    def save_adapter(self, directory: str | Path) -> None:
        """The rebuilt weights as the model saves them (peft's adapter format, or a full model), plus the
        coefficients (``fedkseed_coefficients.safetensors``) that rebuild them from the initial weights."""
        self.model.save_pretrained(directory)
        (Path(directory) / "fedkseed_coefficients.safetensors").write_bytes(to_bytes(self.trainable_state_dict()))
