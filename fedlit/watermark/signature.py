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


def matched_bits(parameters: Mapping[str, torch.Tensor], signature: list[SignedPositions]) -> int:
    """How many of the key's positions carry the key's sign (a zero weight carries none)."""
    values, signs = marked_values(parameters, signature)
    return int((torch.sign(values) == signs).sum())


@torch.no_grad()
def imprint(parameters: Mapping[str, torch.Tensor], signature: list[SignedPositions], gamma: float) -> None:
    """Set each marked weight that misses its margin to ``b_i * gamma``, in place: the smallest change that makes
    the sign loss zero (for an owner who watermarks weights without training them)."""
    for positions in signature:
        flat = parameters[positions.parameter].view(-1)
        index = torch.tensor(positions.indices, device=flat.device)
        signs = torch.tensor(positions.signs, dtype=flat.dtype, device=flat.device)
        short = signs * flat[index] < gamma
        flat[index[short]] = signs[short] * gamma
