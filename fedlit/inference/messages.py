"""What crosses between a client and the server in private inference, as plain dataclasses (no torch): Python
objects in-process or on Ray, msgpack bytes (:mod:`fedlit.wire`) across a network."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Query:
    """A client's prompts as the server sees them: perturbed token by token when the client asks privately."""

    prompts: list[str]
    max_new_tokens: int


@dataclass
class Continuations:
    """The server model's continuation of each prompt of a :class:`Query`, in order."""

    texts: list[str]
