"""Algorithms: how modules, callbacks, data and server strategy compose into a federated run."""

from fedlit.algorithms.fed_homo_llm import fed_homo_llm

__all__ = ["fed_homo_llm"]
