from collections import OrderedDict

import pytest
import torch

from fedlit.payload import Update, changes_from_bytes, changes_to_bytes, check_compatible, from_bytes, to_bytes
from fedlit.strategies import FedAvg, weighted_average


def test_wire_round_trip_is_exact_and_sorted():
    payload = OrderedDict(b=torch.randn(3, 2), a=torch.arange(4, dtype=torch.float32))
    restored = from_bytes(to_bytes(payload))
    assert list(restored) == ["a", "b"]
    for name in payload:
        assert torch.equal(restored[name], payload[name])


def test_check_compatible_names_every_problem():
    expected = {"x": torch.zeros(2), "y": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"client 'c7'.*missing tensors \['y'\].*unexpected tensors \['z'\]"):
        check_compatible(expected, {"x": torch.zeros(2), "z": torch.zeros(1)}, "client 'c7'")
    with pytest.raises(ValueError, match=r"shape mismatch x: expected \(2,\), got \(4,\)"):
        check_compatible(expected, {"x": torch.zeros(4), "y": torch.zeros(3)}, "client 'c7'")


def test_weighted_average_matches_hand_computation():
    torch.manual_seed(0)
    payloads = [{"w": torch.randn(5, 3), "b": torch.randn(7)} for _ in range(4)]
    weights = [10, 1, 3, 250]
    averaged = weighted_average(payloads, weights)
    for name in ("w", "b"):
        hand = sum(p[name].double() * w for p, w in zip(payloads, weights, strict=True)) / sum(weights)
        assert torch.allclose(averaged[name].double(), hand, atol=1e-6, rtol=0)
        assert averaged[name].dtype == torch.float32


def test_fedavg_weights_by_num_examples():
    updates = [Update("a", OrderedDict(t=torch.tensor([1.0, 2.0])), num_examples=1),
               Update("b", OrderedDict(t=torch.tensor([4.0, 8.0])), num_examples=3)]
    result = FedAvg().aggregate(OrderedDict(t=torch.zeros(2)), updates)
    assert torch.allclose(result["t"], torch.tensor([3.25, 6.5]), atol=1e-6)


def test_weighted_average_rejects_bad_weights():
    with pytest.raises(ValueError, match="positive"):
        weighted_average([{"t": torch.ones(1)}], [0])
    with pytest.raises(ValueError, match="at least one"):
        weighted_average([], [])


@pytest.mark.parametrize("per_round, expected", [(2, 2), (0.5, 2), (1.0, 4), (0.1, 1)])
def test_client_sampling_is_seeded_and_sized(per_round, expected):
    ids = ["a", "b", "c", "d"]
    strategy = FedAvg(clients_per_round=per_round)
    first = strategy.configure_round(3, ids, seed=7)
    assert len(first) == expected and len(set(first)) == expected
    assert first == strategy.configure_round(3, ids, seed=7)
    draws = {tuple(strategy.configure_round(r, ids, seed=7)) for r in range(1, 30)}
    assert expected == 4 or len(draws) > 1


def test_client_sampling_errors():
    with pytest.raises(ValueError, match="only 2 clients"):
        FedAvg(clients_per_round=3).configure_round(1, ["a", "b"], seed=0)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        FedAvg(clients_per_round=1.5)


def test_an_update_with_few_changes_travels_as_them_bit_exact_and_malformed_changes_are_refused():
    start = OrderedDict([("coefficients", torch.zeros(1024, dtype=torch.float64)), ("lora", torch.randn(4, 8))])
    update = OrderedDict((n, t.clone()) for n, t in start.items())
    update["coefficients"][[3, 700]] = torch.tensor([0.1, -2.5e-7], dtype=torch.float64)
    update["lora"] += 1e-3  # every entry changes: it travels whole
    wire = changes_to_bytes(update, start)
    back = changes_from_bytes(wire, start)
    assert all(torch.equal(back[n], update[n]) for n in update) and list(back) == sorted(update)
    assert len(wire) < len(to_bytes(update)) - 1024 * 8 + 200  # two (index, value) pairs instead of 8 KiB
    assert len(changes_to_bytes(start, start)) < 400  # nothing changed: nothing but the header (two tensors)
    tampered = to_bytes({"coefficients#changed_indices": torch.tensor([5000], dtype=torch.int32),
                         "coefficients#changed_values": torch.tensor([1.0], dtype=torch.float64),
                         "lora": update["lora"]})
    with pytest.raises(ValueError, match="tensor 'coefficients' do not fit the global payload"):
        changes_from_bytes(tampered, start)


def test_a_strategy_wrapper_forwards_what_it_does_not_change_knowledge_gathering_included():
    """KnowledgeGathering used to drop its inner strategy's fit plan and reason to stop; client-level DP merges its
    own with the inner strategy's."""
    from fedlit.privacy import ClientDPConfig
    from fedlit.strategies import DPFedAvg
    from fedlit.strategies.knowledge import KnowledgeGathering

    class Asking(FedAvg):
        def fit_plan(self, masked):
            return {"asked": masked}

        def stop_reason(self, server_round):
            return "inner stops" if server_round > 2 else None

        def after_round(self, payload, server_round, seed):
            return {"w": payload["w"] + 1}, [{"client": "server", "split": "inner", "round_seen": server_round}]

    gathering = KnowledgeGathering(Asking(clients_per_round=2), prefix="knowledge")
    assert gathering.fit_plan(True) == {"asked": True} and gathering.needs_individual_updates
    assert gathering.stop_reason(2) is None and gathering.stop_reason(3) == "inner stops"
    inner_row = {"client": "server", "split": "inner", "round_seen": 1}
    assert gathering.after_round({"w": 1}, 1, 0) == ({"w": 2}, [inner_row])
    assert gathering.clients_per_round == 2
    private = DPFedAvg(Asking(), ClientDPConfig(noise_multiplier=1.0, clip_norm=0.5, delta=1e-3), num_clients=4)
    assert private.fit_plan(False) == {"asked": False, "clipping": {"clip_norm": 0.5, "noise_std": 0.0}}
    assert private.stop_reason(3) == "inner stops"
    payload, rows = private.after_round({"w": 1}, 1, 0)
    assert payload == {"w": 2} and [row["split"] for row in rows] == ["privacy", "inner"]
