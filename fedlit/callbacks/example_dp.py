"""DP-SGD inside a client's ``Trainer.fit``: opacus computes per-example gradients of the trainable (adapter)
parameters and its ``DPOptimizer`` clips and noises them before each step."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

from fedlit.lightning_modules.causal_lm import CausalLMModule
from fedlit.privacy.client_dp import subsampled_gaussian_epsilon
from fedlit.privacy.example_dp import ExampleDPConfig
from fedlit.privacy.party_secret import PartySecret


class ExampleLevelDP(Callback):
    """Hooks opacus's per-example gradients into the module's model for the fit and swaps each optimizer for a
    ``DPOptimizer``; removes the hooks at the end (the model is shared) and keeps the number of steps taken.

    Args:
        config: noise multiplier, per-example clipping norm, delta.
        batch_size: the fixed batch size (each batch a random subset), the noisy sum's denominator.
        secret: the client's own secret, which the noise is drawn from (never the config's seed).
        server_round: the round of this fit (each round draws its own noise).
    """

    def __init__(self, config: ExampleDPConfig, batch_size: int, secret: PartySecret, server_round: int) -> None:
        self.config, self.batch_size, self.secret, self.server_round = config, batch_size, secret, server_round
        self.grad_sampler: GradSampleModule | None = None
        self.steps = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: CausalLMModule) -> None:
        if trainer.accumulate_grad_batches != 1:
            raise ValueError("DP-SGD clips and noises each optimiser step's batch: use accumulate_grad_batches 1")
        self.grad_sampler = GradSampleModule(pl_module.model, loss_reduction="mean")
        generator = self.secret.torch("dp-sgd-noise", self.server_round, device=pl_module.device)
        trainer.strategy.optimizers = [
            DPOptimizer(optimizer, noise_multiplier=self.config.noise_multiplier,
                        max_grad_norm=self.config.max_grad_norm, expected_batch_size=self.batch_size,
                        generator=generator)
            for optimizer in trainer.optimizers
        ]

    def epsilon(self, num_examples: int, earlier_steps: int) -> float:
        """The client's example-level epsilon after ``earlier_steps`` plus this fit's steps of DP-SGD on
        random-subset batches of its ``num_examples`` (accounted where the data is: on the client)."""
        return subsampled_gaussian_epsilon(num_examples, self.batch_size, self.config.noise_multiplier,
                                           earlier_steps + self.steps, self.config.delta, poisson=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: CausalLMModule) -> None:
        self.steps = trainer.global_step
        if self.grad_sampler is not None:
            self.grad_sampler._close()  # remove the hooks and per-example gradients from the shared model
            self.grad_sampler = None
