"""Where a party's secrets come into being. Every object that holds one (a client's secure-aggregation state, a
party's protective secret) announces its birth here, however it is made: constructed, read back from bytes,
unpickled or copied (their pickling goes through the same constructors). An audit that watches a process while it
runs therefore counts every copy that appears in it, also one that lives only for a moment, where counting the
live objects afterwards would miss it."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator

_watchers: list[collections.Counter[str]] = []


def born(holder: str) -> None:
    """A secret of ``holder`` (``"client 'alice'"``, ``"the server"``) now exists in this process."""
    for counter in _watchers:
        counter[holder] += 1


@contextlib.contextmanager
def watch() -> Iterator[collections.Counter[str]]:
    """Count, by holder, the secrets that come into being in this process while the block runs."""
    counter: collections.Counter[str] = collections.Counter()
    _watchers.append(counter)
    try:
        yield counter
    finally:
        _watchers.remove(counter)


def clients_secrets(counter: collections.Counter[str]) -> int:
    """How many of the counted secrets were clients'."""
    return sum(n for holder, n in counter.items() if holder.startswith("client"))
