"""Example-level differential privacy inside a client: DP-SGD (Abadi et al., 2016) with opacus's per-example
gradients (``GradSampleModule``) and clipping and noise (``DPOptimizer``), on batches that are each a fresh
uniform random subset of the client's examples, accounted by :func:`subsampled_gaussian_epsilon`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import Sampler


@dataclass
class ExampleDPConfig:
    """DP-SGD settings for every client's local training.

    Args:
        noise_multiplier: noise std over ``max_grad_norm`` on each step's summed gradient.
        max_grad_norm: L2 bound of each example's gradient over the trainable (adapter) parameters.
        delta: the delta of each client's reported (epsilon, delta); keep it below 1 / its example count.
    """

    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0 or self.max_grad_norm <= 0 or not 0 < self.delta < 1:
            raise ValueError(f"example_privacy: need noise_multiplier >= 0, max_grad_norm > 0 and 0 < delta < 1, got "
                             f"{self.noise_multiplier}, {self.max_grad_norm} and {self.delta}")


class RandomSubsetBatches(Sampler[list[int]]):
    """Batches that are each an independent uniform random subset of ``batch_size`` of ``num_examples`` indices
    (drawn from ``generator``, the client's own: who was sampled is part of what the accounting keeps secret), which
    is what fixed-size subsampling accounting assumes; an epoch's shuffled partition is not."""

    def __init__(self, num_examples: int, batch_size: int, generator: torch.Generator) -> None:
        if not 0 < batch_size <= num_examples:
            raise ValueError(f"DP-SGD batches: batch_size {batch_size} must be in 1..{num_examples} (the examples)")
        self.num_examples, self.batch_size, self.generator = num_examples, batch_size, generator

    def __len__(self) -> int:
        return self.num_examples // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(len(self)):
            yield torch.randperm(self.num_examples, generator=self.generator)[: self.batch_size].tolist()
