"""DP-SGD inside a client's ``Trainer.fit``: opacus computes per-example gradients of the trainable (adapter)
parameters and its ``DPOptimizer`` clips and noises them before each step."""

from __future__ import annotations

import lightning as L
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

from fedlit.backends.messages import FitRes
from fedlit.client.fit_context import ClientMod, FitContext
from fedlit.client.round_store import RoundStore
from fedlit.lightning_modules.causal_lm import CausalLMModule
from fedlit.privacy.client_dp import subsampled_gaussian_epsilon
from fedlit.privacy.example_dp import ExampleDPConfig
from fedlit.privacy.party_secret import PartySecret


class ExampleLevelDP(ClientMod):
    """Makes the client's batches random subsets (drawn from its secret) for the fit, hooks opacus's per-example
    gradients into the module's model and swaps each optimizer for a ``DPOptimizer``; removes the hooks at the end
    (the model is shared) and keeps the number of steps taken. With a ``store`` it adds the fit's steps to the
    client's count (accounted where the data is: on the client) and reports its ``epsilon`` so far.

    Args:
        config: noise multiplier, per-example clipping norm, delta.
        batch_size: the fixed batch size (each batch a random subset), the noisy sum's denominator.
        secret: the client's own secret, which the noise and the batches are drawn from (never the config's seed).
        server_round: the round of this fit (each round draws its own noise).
        store: the client's DP-SGD step counts by round, under its state directory.
    """

    def __init__(self, config: ExampleDPConfig, batch_size: int, secret: PartySecret, server_round: int,
                 store: RoundStore | None = None) -> None:
        self.config, self.batch_size, self.secret, self.server_round = config, batch_size, secret, server_round
        self.store = store
        self.grad_sampler: GradSampleModule | None = None
        self.steps = 0
        self.num_examples = 0

    def setup(self, trainer: L.Trainer, pl_module: CausalLMModule, stage: str) -> None:
        if trainer.datamodule is not None:  # (a fit on a bare DataLoader brings its own batches)
            trainer.datamodule.random_subsets = self.secret.torch("dp-sgd-batches", self.server_round)
            self.num_examples = len(trainer.datamodule.train_dataset)

    def teardown(self, trainer: L.Trainer, pl_module: CausalLMModule, stage: str) -> None:
        if trainer.datamodule is not None:
            trainer.datamodule.random_subsets = None

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

    def shape_reply(self, reply: FitRes) -> None:
        """Steps spent are spent, whatever becomes of the update: the count is kept before anything is sent."""
        found = self.store.load(before=self.server_round) if self.store is not None else None
        earlier = int(found["steps"]) if found is not None else 0
        if self.store is not None:
            self.store.save(self.server_round, {"steps": torch.tensor([earlier + self.steps])})
        reply.metrics["dp_sgd_steps"] = self.steps
        reply.metrics["epsilon"] = self.epsilon(self.num_examples, earlier)


def dp_sgd(fit: FitContext) -> ExampleLevelDP | None:
    """Settings ``dp_sgd: {noise_multiplier, max_grad_norm, delta}`` (the federation's ``example_privacy``)."""
    settings = fit.settings("dp_sgd")
    if settings is None:
        return None
    store = RoundStore(fit.app.state_directory(fit.ins.run_id), "dp_sgd_steps")
    return ExampleLevelDP(ExampleDPConfig(**settings), fit.datamodule.batch_size, fit.secret, fit.server_round, store)
