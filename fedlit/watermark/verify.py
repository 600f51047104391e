"""Ownership verification: does a model (or an adapter found in the wild) carry an owner's watermark?

Both scores come with the probability that a model which never saw the key scores as well by chance. The key's
signs and trigger targets are drawn uniformly and independently of any such model, so each sign bit matches with
probability 1/2 and each target token is predicted with probability at most 1/``candidates``, whatever the model:
the number of matches is binomial. A zero weight carries no sign and is left out of the sign count (which weights are
zero, pruned say, does not depend on the key's signs); an off-candidate prediction only makes chance matches rarer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from scipy.stats import binom
from torch import nn

from fedlit.watermark.key import WatermarkKey, check_key
from fedlit.watermark.signature import matched_bits

DEFAULT_FPR = 1e-6


def binomial_tail(matches: int, trials: int, chance: float) -> float:
    """P(X >= matches) for X ~ Binomial(trials, chance): the false-positive probability of a score this high."""
    if matches <= 0:
        return 1.0
    return float(binom.sf(matches - 1, trials, chance))


@dataclass
class Score:
    """One test's result: ``matched`` of ``total`` (sign bits or target tokens), the chance of that score or more
    without the watermark (``p_value``), and whether it is under the false-positive rate."""

    matched: int
    total: int
    p_value: float
    verified: bool
    baseline: float | None = None  # the base model's trigger accuracy (triggers on a PeftModel only)

    @property
    def rate(self) -> float:
        return self.matched / self.total if self.total else math.nan


@dataclass
class Verification:
    """A key checked against a model: its sign-bit detection and trigger accuracy (each ``None`` when the key has
    none) and the verdict at false-positive rate ``fpr`` (split evenly between the tests the key has)."""

    owner: str
    fpr: float
    signature: Score | None
    trigger: Score | None

    @property
    def verified(self) -> bool:
        return any(s.verified for s in (self.signature, self.trigger) if s is not None)

    def as_dict(self) -> dict[str, Any]:
        scores = {name: None if s is None else {**asdict(s), "rate": s.rate}
                  for name, s in (("signature", self.signature), ("trigger", self.trigger))}
        return {"owner": self.owner, "fpr": self.fpr, **scores, "verified": self.verified}


@torch.no_grad()
def trigger_matches(model: nn.Module, key: WatermarkKey) -> int:
    """How many target tokens ``model`` predicts greedily after the key's triggers (teacher-forced; every trigger
    and every target of a key has the same length, so there is no padding)."""
    input_ids = torch.tensor([t + g for t, g in zip(key.triggers, key.targets, strict=True)])
    logits = model(input_ids=input_ids.to(next(model.parameters()).device)).logits
    start = len(key.triggers[0])
    predicted = logits[:, start - 1:-1].argmax(-1).cpu()
    return int((predicted == torch.tensor(key.targets)).sum())


def verify(model: nn.Module, key: WatermarkKey, fpr: float = DEFAULT_FPR, source: str = "watermark key"
           ) -> Verification:
    """Check ``key`` against ``model`` (a ``PeftModel`` with the adapter under test, or a full model). A key for
    another base model is refused, naming ``source``."""
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    check_key(key, model, source)
    tests = (len(key.signature) > 0) + (len(key.triggers) > 0)
    level = fpr / max(tests, 1)
    model.eval()
    signature = trigger = None
    if key.signature:
        matched, signed = matched_bits(dict(model.named_parameters()), key.signature)
        p_value = binomial_tail(matched, signed, 0.5)
        signature = Score(matched, signed, p_value, p_value <= level)
    if key.triggers:
        total = sum(len(t) for t in key.targets)
        matched = trigger_matches(model, key)
        baseline = None
        if hasattr(model, "disable_adapter"):  # a PeftModel: the same triggers on its base model alone
            with model.disable_adapter():
                baseline = trigger_matches(model, key) / total
        p_value = binomial_tail(matched, total, 1 / key.candidates)
        trigger = Score(matched, total, p_value, p_value <= level, baseline)
    return Verification(key.owner, fpr, signature, trigger)
