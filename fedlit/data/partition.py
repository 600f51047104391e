"""Partitioners: which records each client holds. Pure functions of (labels or sizes, seed) -> row indices.

- ``natural``: one client per value of a column (play, character: the LEAF-style split).
- ``iid``: a uniform random split into near-equal parts.
- ``dirichlet``: label skew; for each label, client shares ~ Dir(alpha) (Hsu et al., 2019). Lower alpha,
  more skew.
- ``shards``: sort by label, cut into ``num_clients * shards_per_client`` shards, deal shards at random
  (McMahan et al., 2017).
- ``quantity_skew``: IID content, client sizes ~ Dir(alpha) (small alpha: a few clients hold most data).

Every record lands in exactly one client; the same seed gives the same split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PARTITIONERS = ("natural", "iid", "dirichlet", "shards", "quantity_skew")


def natural(values: Sequence[str]) -> dict[str, np.ndarray]:
    """One client per distinct value, named by it; rows keep their order."""
    values = np.asarray(values, dtype=str)
    return {str(v): np.flatnonzero(values == v) for v in np.unique(values)}


def _numbered(parts: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    return {f"client-{i:03d}": np.sort(np.asarray(p, dtype=np.int64)) for i, p in enumerate(parts)}


def _check(num_records: int, num_clients: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_records < num_clients:
        raise ValueError(f"cannot split {num_records} records among {num_clients} clients")


def iid(num_records: int, num_clients: int, seed: int) -> dict[str, np.ndarray]:
    _check(num_records, num_clients)
    return _numbered(np.array_split(np.random.default_rng(seed).permutation(num_records), num_clients))


def quantity_skew(
    num_records: int, num_clients: int, alpha: float, seed: int, min_size: int = 1
) -> dict[str, np.ndarray]:
    """Client sizes drawn from Dir(alpha), each at least ``min_size``; contents shuffled uniformly."""
    _check(num_records, num_clients * min_size)
    rng = np.random.default_rng(seed)
    spare = num_records - num_clients * min_size
    sizes = min_size + np.floor(rng.dirichlet([alpha] * num_clients) * spare).astype(int)
    sizes[: num_records - sizes.sum()] += 1  # hand out the rounding remainder
    return _numbered(np.split(rng.permutation(num_records), np.cumsum(sizes)[:-1]))


def dirichlet(labels: Sequence, num_clients: int, alpha: float, seed: int, min_size: int = 1,
              max_attempts: int = 1000) -> dict[str, np.ndarray]:
    """Per label, split its records among clients with proportions ~ Dir(alpha); redraw until every client
    holds at least ``min_size`` records."""
    labels = np.asarray(labels)
    _check(len(labels), num_clients * min_size)
    if alpha <= 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    for _ in range(max_attempts):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for label in np.unique(labels):
            rows = rng.permutation(np.flatnonzero(labels == label))
            cuts = (np.cumsum(rng.dirichlet([alpha] * num_clients)) * len(rows)).astype(int)[:-1]
            for client, chunk in enumerate(np.split(rows, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return _numbered([np.array(p) for p in parts])
    raise ValueError(f"dirichlet(alpha={alpha}) left a client with fewer than {min_size} records after "
                     f"{max_attempts} draws: raise alpha, lower num_clients or min_size")


def shards(labels: Sequence, num_clients: int, shards_per_client: int, seed: int) -> dict[str, np.ndarray]:
    labels = np.asarray(labels)
    num_shards = num_clients * shards_per_client
    _check(len(labels), num_shards)
    rng = np.random.default_rng(seed)
    by_label = np.argsort(labels, kind="stable")
    pieces = np.array_split(by_label, num_shards)
    order = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return _numbered([np.concatenate([pieces[s] for s in row]) for row in order])


def label_histogram(parts: dict[str, np.ndarray], labels: Sequence) -> tuple[list[str], np.ndarray]:
    """(label names, counts[client, label]) over the labels the clients hold, for a table or heat-map."""
    labels = np.asarray(labels, dtype=str)
    names = sorted(np.unique(labels[np.concatenate(list(parts.values()))]).tolist())
    index = {name: i for i, name in enumerate(names)}
    counts = np.zeros((len(parts), len(names)), dtype=np.int64)
    for row, rows in enumerate(parts.values()):
        for label in labels[rows]:
            counts[row, index[label]] += 1
    return names, counts
