"""The client mods, chained generically: each is a Lightning callback on the client's ``Trainer.fit`` built by one
function of the fit (:class:`~fedlit.client.fit_context.FitContext`), which reads its own settings from the fit
instructions' ``mods`` mapping (set by the server side: a strategy wrapper or the federation) or the client's own
state, and returns ``None`` when the mod does not apply. Registering a mod is one line here.

The order is the order they act when a fit ends (each reads what the one before it left) and shape the reply: the
client's LoRA rank (its share of the global adapter widened to the module before anything else reads it; at the end,
the trained share as the reply), the round's learning rate, the client's own state (kept between its fits, never
sent), the watermark (acts while training only), SCAFFOLD's drift correction (corrects every step; at the end, its
variate change from the trained weights), DP-SGD, error feedback (the last rounding error added back), update
clipping and noise (client-level DP), compression (quantized on the wire), adapter extraction, masking (secure
aggregation).
"""

from __future__ import annotations

from collections.abc import Callable

from fedlit.client.fit_context import ClientMod, FitContext
from fedlit.client.mods.adapter_extraction import AdapterExtraction, adapter_extraction
from fedlit.client.mods.dp_sgd import ExampleLevelDP, dp_sgd
from fedlit.client.mods.drift_correction import DriftCorrection, drift_correction
from fedlit.client.mods.masked_aggregation import MaskedAggregation, masked_aggregation
from fedlit.client.mods.personal_state import PersonalState, personal_state
from fedlit.client.mods.rank_limit import RankLimit, rank_limit
from fedlit.client.mods.round_learning_rate import RoundLearningRate, round_learning_rate
from fedlit.client.mods.update_clipping import UpdateClipping, update_clipping
from fedlit.client.mods.update_compression import ErrorFeedback, UpdateCompression, error_feedback, update_compression
from fedlit.client.mods.watermark_embedding import WatermarkEmbedding, watermark_embedding

CLIENT_MODS: dict[str, Callable[[FitContext], ClientMod | None]] = {
    "lora_rank": rank_limit,
    "round_lr": round_learning_rate,
    "personal": personal_state,
    "watermark": watermark_embedding,
    "scaffold": drift_correction,
    "dp_sgd": dp_sgd,
    "error_feedback": error_feedback,
    "clipping": update_clipping,
    "compression": update_compression,
    "extraction": adapter_extraction,
    "masking": masked_aggregation,
}


def build_mods(fit: FitContext) -> dict[str, ClientMod]:
    """The fit's mods by name, in :data:`CLIENT_MODS` order (those that apply); ``fit.built`` fills as they are built.
    """
    for name, build in CLIENT_MODS.items():
        mod = build(fit)
        if mod is not None:
            fit.built[name] = mod
    return fit.built


__all__ = ["CLIENT_MODS", "AdapterExtraction", "ClientMod", "DriftCorrection", "ErrorFeedback", "ExampleLevelDP",
           "FitContext", "MaskedAggregation", "PersonalState", "RankLimit", "RoundLearningRate", "UpdateClipping",
           "UpdateCompression", "WatermarkEmbedding", "build_mods"]
