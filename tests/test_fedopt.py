"""FedAvgM / FedAdagrad / FedAdam / FedYogi against hand-written updates from the papers, over 3 rounds."""

from collections import OrderedDict

import pytest
import torch

from fedlit.payload import Update
from fedlit.strategies import FedAdagrad, FedAdam, FedAvgM, FedYogi

ETA, B1, B2, TAU = 0.05, 0.9, 0.99, 1e-3


def rounds_of_updates(seed=0, rounds=3, clients=3):
    generator = torch.Generator().manual_seed(seed)
    return [[(torch.randn(4, 3, generator=generator, dtype=torch.float64), n) for n in (5, 1, 2)[:clients]]
            for _ in range(rounds)]


def run_strategy(strategy, x0, schedule):
    x = OrderedDict(w=x0.clone())
    for clients in schedule:
        updates = [Update(f"c{i}", OrderedDict(w=x["w"] + delta), n) for i, (delta, n) in enumerate(clients)]
        x = strategy.aggregate(x, updates)
    return x["w"]


def reference(kind, x0, schedule):
    """Reddi et al. 2021, Algorithm 2 / Hsu et al. 2019, written out with plain tensors."""
    x, m, v = x0.clone(), torch.zeros_like(x0), torch.full_like(x0, TAU**2)
    for clients in schedule:
        total = sum(n for _, n in clients)
        delta = sum(d * n for d, n in clients) / total  # mean client model minus global = mean delta
        if kind == "avgm":
            m = B1 * m + delta
            x = x + ETA * m
            continue
        m = B1 * m + (1 - B1) * delta
        if kind == "adagrad":
            v = v + delta**2
        elif kind == "adam":
            v = B2 * v + (1 - B2) * delta**2
        elif kind == "yogi":
            v = v - (1 - B2) * delta**2 * torch.sign(v - delta**2)
        x = x + ETA * m / (v.sqrt() + TAU)
    return x


STRATEGIES = {
    "avgm": lambda: FedAvgM(server_lr=ETA, momentum=B1),
    "adagrad": lambda: FedAdagrad(server_lr=ETA, beta1=B1, beta2=B2, tau=TAU),
    "adam": lambda: FedAdam(server_lr=ETA, beta1=B1, beta2=B2, tau=TAU),
    "yogi": lambda: FedYogi(server_lr=ETA, beta1=B1, beta2=B2, tau=TAU),
}


@pytest.mark.parametrize("kind", sorted(STRATEGIES))
def test_matches_paper_update_over_three_rounds(kind):
    x0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    schedule = rounds_of_updates()
    ours = run_strategy(STRATEGIES[kind](), x0, schedule)
    assert torch.allclose(ours, reference(kind, x0, schedule), atol=1e-6, rtol=0)
    assert not torch.allclose(ours, x0)


@pytest.mark.parametrize("kind", sorted(STRATEGIES))
def test_state_round_trips_through_a_checkpoint(kind, tmp_path):
    x0 = torch.zeros(4, 3, dtype=torch.float64)
    schedule = rounds_of_updates(seed=3)
    uninterrupted = run_strategy(STRATEGIES[kind](), x0, schedule)

    first = STRATEGIES[kind]()
    x_after_two = run_strategy(first, x0, schedule[:2])
    torch.save(first.state_dict(), tmp_path / "strategy.pt")
    second = STRATEGIES[kind]()
    second.load_state_dict(torch.load(tmp_path / "strategy.pt"))
    resumed = run_strategy(second, x_after_two, schedule[2:])
    assert torch.equal(resumed, uninterrupted)
