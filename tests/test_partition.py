import numpy as np
import pytest

from fedlit.data import partition

LABELS = np.repeat(np.arange(10), 60)  # 10 labels x 60 records


def all_splits():
    n = len(LABELS)
    return {
        "iid": lambda seed: partition.iid(n, 7, seed),
        "dirichlet": lambda seed: partition.dirichlet(LABELS, 7, 0.3, seed),
        "shards": lambda seed: partition.shards(LABELS, 6, 2, seed),
        "quantity_skew": lambda seed: partition.quantity_skew(n, 7, 0.5, seed),
        "natural": lambda seed: partition.natural(LABELS.astype(str)),
    }


@pytest.mark.parametrize("name", sorted(all_splits()))
def test_every_record_in_exactly_one_client(name):
    parts = all_splits()[name](0)
    everything = np.concatenate(list(parts.values()))
    assert sorted(everything.tolist()) == list(range(len(LABELS)))


@pytest.mark.parametrize("name", sorted(all_splits()))
def test_same_seed_same_split_other_seed_other_split(name):
    split = all_splits()[name]
    first, again, other = split(3), split(3), split(4)
    assert first.keys() == again.keys()
    assert all(np.array_equal(first[k], again[k]) for k in first)
    if name != "natural":
        assert any(not np.array_equal(first[k], other[k]) for k in first)


def mean_label_skew(parts) -> float:
    """Mean total-variation distance between each client's label distribution and the global one."""
    _, counts = partition.label_histogram(parts, LABELS)
    shares = counts / counts.sum(axis=1, keepdims=True)
    global_share = counts.sum(axis=0) / counts.sum()
    return float(np.mean(0.5 * np.abs(shares - global_share).sum(axis=1)))


def test_lower_dirichlet_alpha_gives_more_label_skew():
    skew = {alpha: np.mean([mean_label_skew(partition.dirichlet(LABELS, 8, alpha, seed)) for seed in range(5)])
            for alpha in (0.05, 0.5, 5.0, 500.0)}
    assert skew[0.05] > skew[0.5] > skew[5.0] > skew[500.0]
    assert skew[0.05] > 0.6 and skew[500.0] < 0.1


def test_shards_give_each_client_few_labels():
    parts = partition.shards(LABELS, 10, 2, seed=0)
    _, counts = partition.label_histogram(parts, LABELS)
    assert ((counts > 0).sum(axis=1) <= 2).all()


def test_quantity_skew_sizes():
    sizes = sorted(len(p) for p in partition.quantity_skew(600, 6, 0.2, seed=1).values())
    assert sum(sizes) == 600 and sizes[0] >= 1
    assert sizes[-1] > 3 * sizes[0]
    iid_sizes = {len(p) for p in partition.iid(600, 6, seed=1).values()}
    assert iid_sizes == {100}


def test_dirichlet_impossible_min_size_is_reported():
    with pytest.raises(ValueError, match="fewer than 80 records"):
        partition.dirichlet(LABELS, 7, 0.01, seed=0, min_size=80, max_attempts=5)


def test_too_many_clients_rejected():
    with pytest.raises(ValueError, match="cannot split 5 records among 6 clients"):
        partition.iid(5, 6, seed=0)
