"""Private inference (InferDPT): a client asks the server's LLM without revealing its prompt. The perturbation
mechanism is :mod:`fedlit.inference.perturbation`; here are the two sides and the workflow that joins them."""

from fedlit.inference.generation_server import GenerationServer
from fedlit.inference.inference_client import InferenceClientApp, InferenceConfig, ModelSpec
from fedlit.inference.messages import Continuations, Query
from fedlit.inference.private_inference import private_inference

__all__ = ["Continuations", "GenerationServer", "InferenceClientApp", "InferenceConfig", "ModelSpec", "Query",
           "private_inference"]
