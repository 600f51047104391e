"""A client's secret watermark key: drawn once from the model it watermarks, kept in a JSON file (plain data: loading
it executes nothing), never sent anywhere."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fedlit.files import atomic_write_bytes
from fedlit.models.identity import base_of, model_fingerprint
from fedlit.watermark.config import SignatureConfig, TriggerConfig, WatermarkConfig

KEY_FORMAT = "fedlit-watermark/1"

log = logging.getLogger(__name__)


@dataclass
class SignedPositions:
    """Secret positions (flat indices) of one parameter and the sign each must carry."""

    parameter: str
    shape: list[int]
    indices: list[int]
    signs: list[int]


@dataclass
class WatermarkKey:
    """Everything needed to embed and verify one owner's watermark.

    ``fingerprint`` identifies the base model (architecture and input embeddings): a key is only meaningful on
    the model it was drawn for. ``candidates`` is how many tokens the trigger targets were drawn from
    uniformly: a model that never saw the key predicts a target token with probability at most ``1/candidates``.
    """

    owner: str
    base_model: str
    fingerprint: str
    gamma: float = 0.0
    signature: list[SignedPositions] = dataclasses.field(default_factory=list)
    triggers: list[list[int]] = dataclasses.field(default_factory=list)
    targets: list[list[int]] = dataclasses.field(default_factory=list)
    candidates: int = 0

    @property
    def bits(self) -> int:
        return sum(len(p.indices) for p in self.signature)

    def to_json(self) -> bytes:
        return json.dumps({"format": KEY_FORMAT, **dataclasses.asdict(self)}).encode()

    @classmethod
    def from_json(cls, data: bytes, source: str = "key") -> WatermarkKey:
        """A key read from JSON and checked field by field; a malformed one is refused naming ``source`` and the
        field."""
        try:
            raw = json.loads(data)
        except ValueError as error:
            raise ValueError(f"watermark key {source} is not JSON: {error}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"watermark key {source}: expected a JSON object, got a {type(raw).__name__}")
        if raw.pop("format", None) != KEY_FORMAT:
            raise ValueError(f"watermark key {source}: not a {KEY_FORMAT} key (its 'format' field)")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted({"owner", "base_model", "fingerprint"} - set(raw))
        unknown = sorted(set(raw) - fields)
        if missing or unknown:
            raise ValueError(f"watermark key {source}: " + "; ".join(
                ([f"missing field(s) {', '.join(missing)}"] if missing else [])
                + ([f"unknown field(s) {', '.join(unknown)}"] if unknown else [])))
        try:
            raw["signature"] = [SignedPositions(**p) for p in raw.get("signature", [])]
            key = cls(**raw)
        except TypeError as error:
            raise ValueError(f"watermark key {source}: a signature entry needs parameter, shape, indices and signs "
                             f"({error})") from None
        key.check(source)
        return key

    def check(self, source: str) -> None:
        """Refuse a key that marks nothing, or whose positions, signs or triggers cannot be what a key holds."""
        if not self.signature and not self.triggers:
            raise ValueError(f"watermark key {source}: it holds no signature positions and no triggers")
        for positions in self.signature:
            where = f"watermark key {source}, parameter '{positions.parameter}'"
            if len(positions.indices) != len(positions.signs):
                raise ValueError(f"{where}: {len(positions.indices)} indices but {len(positions.signs)} signs")
            if any(sign not in (-1, 1) for sign in positions.signs):
                raise ValueError(f"{where}: signs must be -1 or 1, got {sorted(set(positions.signs) - {-1, 1})}")
            size = math.prod(positions.shape)
            outside = [i for i in positions.indices if not (isinstance(i, int) and 0 <= i < size)]
            if outside:
                raise ValueError(f"{where}: indices {outside[:3]} are outside its {size} entries (shape "
                                 f"{positions.shape})")
        if len(self.triggers) != len(self.targets) or (self.triggers and self.candidates < 1):
            raise ValueError(f"watermark key {source}: {len(self.triggers)} triggers, {len(self.targets)} targets "
                             f"and {self.candidates} candidates do not fit together")

    def save(self, path: Path) -> None:
        atomic_write_bytes(path, self.to_json(), mode=0o600)  # readable by its owner only

    @classmethod
    def load(cls, path: str | Path) -> WatermarkKey:
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            raise OSError(f"watermark key {path} cannot be read: {error.strerror or error}") from None
        return cls.from_json(data, str(path))


def key_generator(config: WatermarkConfig, owner: str) -> torch.Generator:
    """The key's randomness: from ``key_seed`` and the owner's id when set, else from the operating system."""
    if config.key_seed is None:
        seed = secrets.randbits(63)
    else:
        log.warning("watermark.key_seed %d: %s's key is drawn from a public seed: whoever knows it can rebuild the key "
                    "and strip the mark. For reproducible experiments only.", config.key_seed, owner)
        seed = int.from_bytes(hashlib.sha256(f"{config.key_seed}/{owner}".encode()).digest()[:8], "big") >> 1
    return torch.Generator().manual_seed(seed)


def candidate_parameters(parameters: Mapping[str, torch.Tensor], pattern: str | None) -> dict[str, torch.Tensor]:
    """The parameters a signature may use, by name (sorted), or an error naming the pattern."""
    chosen = {n: parameters[n] for n in sorted(parameters) if pattern is None or re.search(pattern, n)}
    if not chosen:
        examples = ", ".join(sorted(parameters)[:3])
        raise ValueError(f"watermark.signature.parameters '{pattern}' matches no trainable parameter (e.g. {examples})")
    return chosen


def check_signature_fits(parameters: Mapping[str, torch.Tensor], config: SignatureConfig) -> dict[str, torch.Tensor]:
    """The parameters a signature may use, refusing a pattern that matches none or more bits than their entries."""
    chosen = candidate_parameters(parameters, config.parameters)
    entries = sum(t.numel() for t in chosen.values())
    if config.bits > entries:
        raise ValueError(f"watermark.signature.bits is {config.bits} but the parameters it may use "
                         f"('{config.parameters}') have only {entries} entries")
    return chosen


def draw_signature(parameters: Mapping[str, torch.Tensor], config: SignatureConfig,
                   generator: torch.Generator) -> list[SignedPositions]:
    """``config.bits`` distinct positions drawn uniformly over the chosen parameters, each with a random sign."""
    chosen = check_signature_fits(parameters, config)
    sizes = torch.tensor([t.numel() for t in chosen.values()])
    flat = torch.randperm(int(sizes.sum()), generator=generator)[:config.bits].sort().values
    signs = torch.randint(0, 2, (config.bits,), generator=generator) * 2 - 1
    owner_of = torch.searchsorted(sizes.cumsum(0), flat, right=True)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)[:-1]])
    positions = []
    for i, (name, tensor) in enumerate(chosen.items()):
        mine = owner_of == i
        if mine.any():
            positions.append(SignedPositions(name, list(tensor.shape), (flat[mine] - offsets[i]).tolist(),
                                             signs[mine].tolist()))
    return positions


def trigger_candidates(vocab_size: int, tokenizer: PreTrainedTokenizerBase | None) -> torch.Tensor:
    """Token ids a trigger or target may use: the vocabulary without the special tokens."""
    special = set(tokenizer.all_special_ids) if tokenizer is not None else set()
    return torch.tensor([i for i in range(vocab_size) if i not in special])


def draw_triggers(config: TriggerConfig, candidates: torch.Tensor,
                  generator: torch.Generator) -> tuple[list[list[int]], list[list[int]]]:
    """Trigger prompts and their target continuations, every token uniform over ``candidates``."""
    def tokens(length: int) -> list[list[int]]:
        picks = torch.randint(0, len(candidates), (config.triggers, length), generator=generator)
        return candidates[picks].tolist()

    return tokens(config.trigger_length), tokens(config.target_length)


def make_key(owner: str, model: nn.Module, parameters: Mapping[str, torch.Tensor], config: WatermarkConfig,
             tokenizer: PreTrainedTokenizerBase | None = None) -> WatermarkKey:
    """A fresh key for ``owner`` on ``model``, with signature positions among ``parameters`` (name -> tensor)."""
    generator = key_generator(config, owner)
    base = base_of(model)
    key = WatermarkKey(owner, str(getattr(base.config, "_name_or_path", "")), model_fingerprint(model))
    if config.signature is not None:
        key.gamma = config.signature.gamma
        key.signature = draw_signature(parameters, config.signature, generator)
    if config.trigger is not None:
        vocab_size = base.get_input_embeddings().weight.shape[0]
        if tokenizer is not None:  # embedding rows past the tokenizer's vocabulary are padding
            vocab_size = min(vocab_size, len(tokenizer))
        candidates = trigger_candidates(vocab_size, tokenizer)
        key.triggers, key.targets = draw_triggers(config.trigger, candidates, generator)
        key.candidates = len(candidates)
    return key


def check_key(key: WatermarkKey, model: nn.Module, source: str = "watermark key") -> None:
    """Refuse a key drawn for another base model, or naming parameters the model does not have."""
    fingerprint = model_fingerprint(model)
    if key.fingerprint != fingerprint:
        name = getattr(base_of(model).config, "_name_or_path", "?")
        raise ValueError(f"{source} was made for base model '{key.base_model}' (fingerprint {key.fingerprint[:12]}), "
                         f"not for this one, '{name}' (fingerprint {fingerprint[:12]})")
    shapes = {n: list(p.shape) for n, p in model.named_parameters()}
    for positions in key.signature:
        if shapes.get(positions.parameter) != positions.shape:
            raise ValueError(f"{source} marks parameter '{positions.parameter}' of shape {positions.shape}, which "
                             f"this model does not have (a different adapter configuration?)")


def load_or_make_key(path: Path, owner: str, model: nn.Module, parameters: Mapping[str, torch.Tensor],
                     config: WatermarkConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> WatermarkKey:
    """The owner's key in ``path``: read and checked against ``model`` when it exists, else drawn and written."""
    if path.is_file():
        key = WatermarkKey.load(path)
        check_key(key, model, f"watermark key {path}")
        return key
    key = make_key(owner, model, parameters, config, tokenizer)
    key.save(path)
    return key

