"""Who masks with whom: every pair (SecAgg) or a random k-regular Harary graph (SecAgg+)."""

from __future__ import annotations

import numpy as np


def neighbour_graph(client_ids: list[str], degree: int, seed: int) -> dict[str, list[str]]:
    """Each client's neighbours, symmetric. The clients sit on a cycle in a seeded random order, each linked
    to ``degree // 2`` on either side (Bell et al. 2020); ``degree >= n - 1`` links everyone."""
    n = len(client_ids)
    if degree >= n - 1:
        return {c: [o for o in client_ids if o != c] for c in client_ids}
    order = [client_ids[i] for i in np.random.default_rng([seed, n]).permutation(n)]
    graph: dict[str, set[str]] = {c: set() for c in client_ids}
    for position, client in enumerate(order):
        for step in range(1, degree // 2 + 1):
            other = order[(position + step) % n]
            graph[client].add(other)
            graph[other].add(client)
    return {c: sorted(graph[c]) for c in client_ids}
