"""Offsite-tuning (Xiao et al., 2023): split a decoder into trainable adapter blocks and a lossy emulator.

The owner keeps the full model. Clients get the embeddings and head, the first and last few blocks
(the *adapter*, which they tune) and an *emulator* of the middle: every n-th middle block (uniform
layer drop). After federated tuning the adapter blocks are plugged back into the full model.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from fedlit.payload import Payload


@dataclass
class OffsiteConfig:
    """How the owner splits its model.

    Args:
        front: adapter blocks at the bottom (trained by clients).
        back: adapter blocks at the top (trained by clients).
        emulator_ratio: fraction of the middle blocks the emulator keeps, evenly spaced (1.0 keeps all:
            the clients then hold the full model).
    """

    front: int = 2
    back: int = 2
    emulator_ratio: float = 0.5


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The dotted path and module list of the transformer blocks (``model.layers`` for Llama, ``transformer.h``
    for GPT-2, ...): the ModuleList with ``config.num_hidden_layers`` entries."""
    count = model.config.num_hidden_layers
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == count]
    if len(found) != 1:
        raise ValueError(f"{type(model).__name__}: cannot tell which module list holds the {count} decoder blocks "
                         f"(candidates: {[n for n, _ in found]})")
    return found[0]


def emulator_plan(num_blocks: int, config: OffsiteConfig) -> list[int]:
    """The full model's block indices the emulator keeps, in order: adapter front, dropped-down middle,
    adapter back."""
    if config.front < 0 or config.back < 0 or config.front + config.back >= num_blocks:
        raise ValueError(f"offsite: front={config.front} + back={config.back} adapter blocks must leave a middle "
                         f"of the model's {num_blocks} blocks")
    if not 0 < config.emulator_ratio <= 1:
        raise ValueError(f"offsite.emulator_ratio must be in (0, 1], got {config.emulator_ratio}")
    middle = list(range(config.front, num_blocks - config.back))
    keep = max(1, round(config.emulator_ratio * len(middle)))
    kept = sorted({middle[int(i)] for i in np.linspace(0, len(middle) - 1, keep).round()})
    return [*range(config.front), *kept, *range(num_blocks - config.back, num_blocks)]


def adapter_indices(plan: list[int], config: OffsiteConfig) -> list[int]:
    """Emulator block indices of the adapter (the first ``front`` and last ``back``)."""
    return [*range(config.front), *range(len(plan) - config.back, len(plan))]


def _block_pattern(prefix: str) -> re.Pattern:
    return re.compile(rf"^(?P<head>(?:.*\.)?{re.escape(prefix)}\.)(?P<index>\d+)(?P<tail>\..*)$")


def rename_blocks(state: dict[str, torch.Tensor], prefix: str, mapping: dict[int, int]) -> Payload:
    """Tensors of blocks in ``mapping`` renamed to their new index; tensors of other blocks dropped;
    tensors outside the blocks kept as they are."""
    pattern = _block_pattern(prefix)
    out = Payload()
    for name, tensor in state.items():
        match = pattern.match(name)
        if match is None:
            out[name] = tensor
        elif int(match["index"]) in mapping:
            out[f"{match['head']}{mapping[int(match['index'])]}{match['tail']}"] = tensor
    return out


def build_emulator(full: PreTrainedModel, config: OffsiteConfig) -> tuple[PreTrainedModel, list[int]]:
    """A model of the same class holding only the kept blocks (renumbered), embeddings, norm and head; and
    the plan (which full block each emulator block is). The dropped blocks are never copied."""
    prefix, blocks = decoder_blocks(full)
    plan = emulator_plan(len(blocks), config)
    emulator_config = copy.deepcopy(full.config)
    emulator_config.num_hidden_layers = len(plan)
    if isinstance(getattr(emulator_config, "layer_types", None), list):
        emulator_config.layer_types = [emulator_config.layer_types[i] for i in plan]
    emulator = type(full)(emulator_config).to(full.dtype)  # non-persistent buffers (rotary tables) built here
    state = rename_blocks(full.state_dict(), prefix, {full_index: e for e, full_index in enumerate(plan)})
    emulator.load_state_dict(state, strict=True)
    return emulator.eval(), plan


def adapter_state(model: nn.Module, plan: list[int], config: OffsiteConfig) -> Payload:
    """The emulator's adapter blocks' tensors (what clients train), by emulator name."""
    prefix, _ = decoder_blocks(model)
    in_blocks = _block_pattern(prefix)
    kept = adapter_indices(plan, config)
    return rename_blocks({n: t for n, t in model.state_dict().items() if in_blocks.match(n)},
                         prefix, {e: e for e in kept})


def plug_in(full: PreTrainedModel, adapters: dict[str, torch.Tensor], plan: list[int]) -> None:
    """Copy adapter tensors named by emulator block index into the full model's matching blocks, in place."""
    prefix, _ = decoder_blocks(full)
    renamed = rename_blocks(adapters, prefix, dict(enumerate(plan)))
    target = full.state_dict()
    unknown = sorted(set(renamed) - set(target))
    if unknown:
        raise ValueError(f"plug-in: the full model has no tensors {unknown[:5]}")
    with torch.no_grad():
        for name, tensor in renamed.items():
            target[name].copy_(tensor)
