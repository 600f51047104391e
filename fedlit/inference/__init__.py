"""Private inference (InferDPT): a client asks the server's LLM without revealing its prompt. The perturbation
mechanism is :mod:`fedlit.inference.perturbation`; here are the two sides and the workflow that joins them (each
loaded on first use: a Flower party reading a message needs only the plain messages)."""

from fedlit.lazy import lazy_exports

_EXPORTS = {
    "GenerationServer": "fedlit.inference.generation_server",
    "InferenceClientApp": "fedlit.inference.inference_client",
    "InferenceConfig": "fedlit.inference.inference_client",
    "ModelSpec": "fedlit.inference.inference_client",
    "Continuations": "fedlit.inference.messages",
    "Query": "fedlit.inference.messages",
    "private_inference": "fedlit.inference.inference_workflow",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
