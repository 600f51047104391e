"""The feature watermark's maths: the hinge sign loss that embeds it, the sign-bit detection that verifies it, and
the projection an owner who does not train uses to imprint it."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedlit.watermark.key import SignedPositions


def sign_loss(values: torch.Tensor, signs: torch.Tensor, gamma: float) -> torch.Tensor:
    """FedIPR's sign loss ``sum(relu(gamma - b_i * w_i))``: zero once every weight carries its sign with margin
    ``gamma``; its gradient is ``-b_i`` wherever the margin is not met."""
    return torch.relu(gamma - signs * values).sum()


def marked_values(parameters: Mapping[str, torch.Tensor],
                  signature: list[SignedPositions]) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights at the key's positions (differentiable, in key order) and their signs."""
    values, signs = [], []
    for positions in signature:
        tensor = parameters[positions.parameter]
        index = torch.tensor(positions.indices, device=tensor.device)
        values.append(tensor.reshape(-1)[index].float())
        signs.append(torch.tensor(positions.signs, dtype=torch.float32, device=tensor.device))
    return torch.cat(values), torch.cat(signs)


def matched_bits(parameters: Mapping[str, torch.Tensor], signature: list[SignedPositions]) -> tuple[int, int]:
    """How many of the key's positions carry the key's sign, and how many carry a sign at all: a zero weight (one
    that pruning removed, say) tells nothing either way and is left out of the test."""
    values, signs = marked_values(parameters, signature)
    return int((torch.sign(values) == signs).sum()), int((values != 0).sum())


@torch.no_grad()
def imprint(parameters: Mapping[str, torch.Tensor], signature: list[SignedPositions], generator: torch.Generator,
            floor: float = 0.0) -> None:
    """Give every marked weight its key's sign and a magnitude drawn from its unmarked neighbours' (the other
    entries of its tensor), in place: each a random quantile of their magnitudes, interpolated between two of them.

    The marked entries then have the distribution of the rest and no value repeats, so one update shows nothing
    of the key's positions (setting each to an exact margin, ``±gamma``, put the key on display). ``generator``
    draws the quantiles: the key holder's own, the same every fit, so a marked weight moves with its neighbours'
    distribution from round to round rather than jumping. ``floor``: the magnitude where the neighbours' is zero
    (LoRA B before any training), so the sign is still carried.
    """
    for positions in signature:
        flat = parameters[positions.parameter].view(-1)
        index = torch.tensor(positions.indices, device=flat.device)
        signs = torch.tensor(positions.signs, dtype=torch.float64, device=flat.device)
        unmarked = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
        unmarked[index] = False
        magnitudes = (flat[unmarked] if bool(unmarked.any()) else flat[index]).abs().double().sort().values
        quantiles = torch.rand(len(index), generator=generator, dtype=torch.float64).to(flat.device)
        where = quantiles * (len(magnitudes) - 1)
        low = where.floor().long()
        high = (low + 1).clamp(max=len(magnitudes) - 1)
        drawn = torch.lerp(magnitudes[low], magnitudes[high], where - low)
        flat[index] = (signs * torch.where(drawn > 0, drawn, torch.full_like(drawn, floor))).to(flat.dtype)
