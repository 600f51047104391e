"""What a client's ownership watermark is made of (FedIPR, Li et al., TPAMI 2022), as config: a feature watermark
(a secret sign pattern on chosen trainable weights) and a backdoor one (secret trigger prompts mapped to secret
continuations). The key itself is drawn and kept by the client (:mod:`fedlit.watermark.key`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field


@dataclass
class SignatureConfig:
    """The feature watermark: ``bits`` secret signs forced onto as many secret positions of the trainable
    parameters by the hinge sign loss ``weight * sum(relu(gamma - b_i * w_i))``.

    Args:
        bits: positions (and signs) in the client's key.
        gamma: the margin: the loss is zero once every ``b_i * w_i >= gamma``.
        weight: the sign loss's weight beside the task loss.
        enforce: also give every marked weight its sign when the local fit ends, with a magnitude drawn from the
            other entries of its tensor (:func:`~fedlit.watermark.signature.imprint`): every update carries the
            whole mark, and nothing in it shows where the mark is. FedAvg and later training flip some marked
            weights (a mark as small as its neighbours is no stronger than they are); the many bits make up for it.
        parameters: a regular expression over trainable parameter names that the positions are drawn from; the
            default, LoRA's B matrices, start at zero, so no position starts with a sign to overcome. Other peft
            methods name theirs (``ia3_l``, ``prompt_embeddings``, ...); ``None``: every trainable parameter.
    """

    bits: int = 1024
    gamma: float = 0.02
    weight: float = 1.0
    enforce: bool = True
    parameters: str | None = "lora_B"

    def __post_init__(self) -> None:
        if self.bits < 1:
            raise ValueError(f"watermark.signature.bits must be >= 1, got {self.bits}")
        if not (math.isfinite(self.gamma) and self.gamma >= 0 and math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"watermark.signature: need gamma >= 0 and weight > 0, got {self.gamma} and "
                             f"{self.weight}")
        if self.parameters is not None:
            try:
                re.compile(self.parameters)
            except re.error as error:
                raise ValueError(f"watermark.signature.parameters '{self.parameters}' is not a regular "
                                 f"expression: {error}") from None


@dataclass
class TriggerConfig:
    """The backdoor watermark: ``triggers`` secret prompts of random tokens, each with a secret continuation of
    random tokens, mixed into the client's training batches.

    Args:
        triggers: trigger prompts in the key.
        trigger_length: tokens per trigger prompt.
        target_length: tokens per continuation (what verification scores).
        rate: the chance that a training example is swapped for a trigger example.
    """

    triggers: int = 4
    trigger_length: int = 8
    target_length: int = 4
    rate: float = 0.2

    def __post_init__(self) -> None:
        if min(self.triggers, self.trigger_length, self.target_length) < 1:
            raise ValueError("watermark.trigger: triggers, trigger_length and target_length must be >= 1, got "
                             f"{self.triggers}, {self.trigger_length} and {self.target_length}")
        if not 0 < self.rate <= 1:
            raise ValueError(f"watermark.trigger.rate must be in (0, 1], got {self.rate}")


@dataclass
class WatermarkConfig:
    """Which clients embed a watermark, of what kind, and where they keep their keys.

    Args:
        signature: the feature watermark (``None``: none).
        trigger: the backdoor watermark (``None``: none).
        clients: the clients that embed (``None``: every client). In a deployment each party decides for itself.
        key_dir: where each client keeps its key file ``<client id>.json`` (an existing one is reused); a relative
            path is under the client's own state directory (``output_dir/client_state`` in a simulation, the party's
            ``state-dir`` in a deployment). Keys never travel.
        key_seed: draw every key from this seed and the client id (reproducible experiments; whoever knows it can
            rebuild the keys); ``None``: from the operating system's randomness.
    """

    signature: SignatureConfig | None = field(default_factory=SignatureConfig)
    trigger: TriggerConfig | None = field(default_factory=TriggerConfig)
    clients: list[str] | None = None
    key_dir: str = "watermark_keys"
    key_seed: int | None = None

    def __post_init__(self) -> None:
        if self.signature is None and self.trigger is None:
            raise ValueError("watermark: set signature, trigger or both (or drop the watermark key)")

    def embeds(self, client_id: str) -> bool:
        return self.clients is None or client_id in self.clients

    def check_clients(self, client_ids: list[str]) -> None:
        """Refuse a ``clients`` entry that names no client of the federation."""
        unknown = sorted(set(self.clients or ()) - set(client_ids))
        if unknown:
            raise ValueError(f"watermark.clients: {unknown} are not clients of this federation ({sorted(client_ids)})")
