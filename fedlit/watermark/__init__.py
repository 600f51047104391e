"""Ownership watermarks (FedIPR) for federated adapters: each client embeds its own secret key while it trains
(:class:`fedlit.client.mods.WatermarkEmbedding`, a client mod) and anyone holding a key can verify a model later."""

from fedlit.watermark.config import SignatureConfig, TriggerConfig, WatermarkConfig
from fedlit.watermark.key import WatermarkKey, check_key, load_or_make_key, make_key
from fedlit.watermark.signature import imprint, marked_values, matched_bits, sign_loss
from fedlit.watermark.verify import DEFAULT_FPR, Score, Verification, binomial_tail, verify

__all__ = ["DEFAULT_FPR", "Score", "SignatureConfig", "TriggerConfig", "Verification", "WatermarkConfig",
           "WatermarkKey", "binomial_tail", "check_key", "imprint", "load_or_make_key",
           "make_key", "marked_values", "matched_bits", "sign_loss", "verify"]
