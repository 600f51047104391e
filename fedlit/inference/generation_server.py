"""The server's side of private inference: its model continues whatever prompts it receives. It sees only the
:class:`~fedlit.inference.messages.Query` (perturbed prompts under private inference), nothing else of a client's."""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedTokenizerBase

from fedlit.inference.messages import Continuations, Query
from fedlit.lightning_modules.generation import generate_texts


class GenerationServer:
    """Greedy continuations from ``model`` (any causal LM: a plain HF model, a base with a federated adapter, the
    plugged-in FedOST model, the FedCoLLM server LLM).

    Args:
        model: the server's model.
        tokenizer: its tokenizer (prompts travel as text, so client and server may tokenize differently).
        max_new_tokens: the most tokens a client may ask for per prompt.
        batch_size: prompts generated together.
    """

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int = 64,
                 batch_size: int = 16) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    def answer(self, query: Query) -> Continuations:
        """Continue every prompt of ``query`` (at most ``max_new_tokens`` new tokens each)."""
        new_tokens = min(query.max_new_tokens, self.max_new_tokens)
        if new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {query.max_new_tokens}")
        texts = generate_texts(self.model, self.tokenizer, query.prompts, new_tokens, self.batch_size)
        return Continuations(texts)
