"""Secure aggregation: exact recovery of the sum under dropouts, what the server can and cannot see, bad input."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from fedlit.payload import Update
from fedlit.secure import (
    ProtocolError,
    RoundAbandoned,
    SecAggServer,
    SecureAggregationConfig,
    SecureRound,
    ring,
    shamir,
)
from fedlit.secure.graph import neighbour_graph
from fedlit.secure.messages import MaskedInput, UnmaskResponse, decode, encode
from fedlit.strategies import FedAvg, FedMedian

LENGTH = 64


def client_updates(n: int, seed: int = 0) -> dict[str, tuple[np.ndarray, int]]:
    rng = np.random.default_rng(seed)
    return {f"c{i:02d}": (rng.normal(scale=0.05, size=LENGTH), int(rng.integers(1, 500))) for i in range(n)}


def run_round(config, updates, dropouts=None):
    secure = SecureRound(config, 1, list(updates), LENGTH, seed=3, dropouts=dropouts)
    secure.mask_and_submit(lambda c: updates[c])
    return secure, *secure.finish()


def plain_sum(config, updates, included):
    weighted = sum(n * np.clip(u, -config.clip, config.clip) for c, (u, n) in updates.items() if c in included)
    return weighted, sum(n for c, (_, n) in updates.items() if c in included)


def dropout_plan(config: SecureAggregationConfig, ids: list[str], how_many: int) -> dict[str, list[str]]:
    """``how_many`` dropouts spread over the stages; those dropping at ``unmask`` did send their input."""
    dropped = ids[1::3][:how_many]
    stages = ["masked_input", "unmask", "share"]
    return {stage: dropped[i::3] for i, stage in enumerate(stages)}


def max_dropouts(config: SecureAggregationConfig, n: int) -> int:
    """Any k - t clients may drop, wherever they sit in the neighbour graph."""
    return config.degree(n) - config.shares_needed(n)


@pytest.mark.parametrize("n, neighbours", [(2, None), (3, None), (10, None), (10, 4), (50, 8)])
@pytest.mark.parametrize("dropouts", ["none", "one", "max"])
def test_unmasked_sum_equals_plain_sum_within_bound(n, neighbours, dropouts):
    config = SecureAggregationConfig(neighbours=neighbours)
    updates = client_updates(n)
    ids = sorted(updates)
    count = {"none": 0, "one": 1, "max": max_dropouts(config, n)}[dropouts]
    if count > max_dropouts(config, n):
        pytest.skip(f"{n} clients with {neighbours} neighbours tolerate {max_dropouts(config, n)} dropouts")
    plan = dropout_plan(config, ids, count)
    _, total, examples = run_round(config, updates, plan)
    gone = set(plan["masked_input"]) | set(plan["share"])
    expected, expected_examples = plain_sum(config, updates, set(ids) - gone)
    assert examples == expected_examples
    bound = config.error_bound(n - len(gone), 1)  # in units of the weighted sum
    assert np.abs(total - expected).max() <= bound
    assert np.abs(total - expected).max() > 0 or count == 0  # the comparison sees real fixed-point values


@pytest.mark.parametrize("n, neighbours", [(3, None), (10, None), (50, 8)])
def test_one_dropout_beyond_the_maximum_abandons_the_round(n, neighbours):
    config = SecureAggregationConfig(neighbours=neighbours)
    updates = client_updates(n)
    ids = sorted(updates)
    graph = neighbour_graph(ids, config.degree(n), 3 + 1)
    victim = ids[0]  # drop one more than tolerable, all among one client's neighbours
    dropped = graph[victim][: max_dropouts(config, n) + 1]
    with pytest.raises(RoundAbandoned, match="needed"):
        run_round(config, updates, {"masked_input": dropped})


def test_small_ring_and_bound_hold_in_32_bits():
    config = SecureAggregationConfig(bits=32, scale=2.0**12, clip=0.1)
    updates = client_updates(10)
    updates["c00"] = (np.full(LENGTH, 5.0), 3)  # clipped to 0.1 before weighting
    _, total, examples = run_round(config, updates)
    expected, _ = plain_sum(config, updates, set(updates))
    assert np.abs(total - expected).max() <= config.error_bound(10, 1)


def test_overflow_is_refused_before_anything_is_sent():
    config = SecureAggregationConfig(bits=16, scale=2.0**10)
    with pytest.raises(OverflowError, match="client 'c0.'.*lower secure_aggregation.scale"):
        run_round(config, client_updates(4))


def test_masked_vector_bits_look_uniform():
    config = SecureAggregationConfig()
    length = 100_000
    secure = SecureRound(config, 1, ["a", "b", "c"], length)
    secure.exchange_keys()
    packed = secure.clients["a"].secagg.mask(np.zeros(length), 1).packed  # all-zero input: only the masks show
    assert len(packed) == (length + 1) * 8
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8)).reshape(-1, 64)
    ones = bits.sum(axis=0)
    sigma = math.sqrt(length) / 2
    assert np.all(np.abs(ones - length / 2) < 5 * sigma), ones
    counts = np.bincount(np.frombuffer(packed, dtype=np.uint8), minlength=256)
    expected = counts.sum() / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 255 + 6 * math.sqrt(2 * 255)  # df = 255: mean 255, sd sqrt(510)


def arrays_reachable(obj, seen=None) -> list[np.ndarray]:
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return [obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        children = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    elif isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, list | tuple | set):
        children = list(obj)
    elif hasattr(obj, "__dict__"):
        children = list(vars(obj).values())
    else:
        return []
    return [a for child in children for a in arrays_reachable(child, seen)]


def test_server_never_holds_an_individual_unmasked_update():
    config = SecureAggregationConfig(neighbours=4)
    updates = client_updates(8)
    secure = SecureRound(config, 1, list(updates), LENGTH, dropouts={"masked_input": ["c03"]})
    encoded = {c: ring.encode(np.append(n * u, n), config.scale, config.bits, 2**60) for c, (u, n) in updates.items()}

    def server_sees_no_individual_input():
        for array in arrays_reachable(secure.server):
            for client, values in encoded.items():
                assert not np.array_equal(array, values), f"server holds client {client}'s unmasked input"
                assert not np.allclose(array[:-1].astype(np.float64), updates[client][0]), client
                assert not np.allclose(ring.decode(array, config.scale, config.bits)[:-1],
                                       updates[client][1] * updates[client][0], atol=1e-3), client

    for client_id in secure.exchange_keys():
        secure.submit(client_id, encode(secure.clients[client_id].secagg.mask(*updates[client_id])))
        server_sees_no_individual_input()
        assert len(arrays_reachable(secure.server)) == 1  # only the running sum
    total, _ = secure.finish()
    server_sees_no_individual_input()
    assert not np.allclose(total, updates["c00"][1] * updates["c00"][0], atol=1e-3)


@pytest.fixture
def stage3():
    """A 4-client round after key exchange, with c00's masked input already in."""
    config = SecureAggregationConfig()
    updates = client_updates(4)
    secure = SecureRound(config, 1, list(updates), LENGTH)
    secure.exchange_keys()
    masked = {c: secure.clients[c].secagg.mask(*updates[c]) for c in updates}
    secure.submit("c00", encode(masked["c00"]))
    return secure, masked, updates


@pytest.mark.parametrize("tamper, message", [
    (lambda m: dataclasses.replace(m, packed=m.packed[:-8]), "512 bytes do not hold 65 values of 64 bits"),
    (lambda m: dataclasses.replace(m, packed=list(m.packed)), "expected packed bytes, got list"),
    (lambda m: dataclasses.replace(m, client_id="c00"), "duplicate message from client 'c00'"),
    (lambda m: dataclasses.replace(m, client_id="mallory"), "unknown client id 'mallory'"),
    (lambda m: dataclasses.replace(m, server_round=7), "is for round 7"),
])
def test_bad_masked_input_is_rejected_and_not_aggregated(stage3, tamper, message):
    secure, masked, _ = stage3
    before = secure.server.total.copy()
    with pytest.raises(ProtocolError, match=message):
        secure.submit("c01", encode(tamper(masked["c01"])))
    assert np.array_equal(secure.server.total, before)
    assert secure.server.survivors == ["c00"]


def test_share_that_does_not_reconstruct_is_named(stage3):
    secure, masked, updates = stage3
    for c in ("c01", "c02", "c03"):
        secure.submit(c, encode(masked[c]))
    request = secure.server.unmask_request()
    responses = [secure.clients[c].secagg.unmask(request) for c in request.survivors]
    x, share = responses[1].self_mask_shares["c00"]
    forged = dict(responses[1].self_mask_shares, c00=[x, bytes(len(share) - 1) + b"\x01"])
    responses[1] = dataclasses.replace(responses[1], self_mask_shares=forged)
    with pytest.raises(ProtocolError, match="client 'c00''s self-mask seed .* do not reconstruct it"):
        secure.server.finish(responses)


def test_tampered_share_ciphertext_fails_authentication():
    config = SecureAggregationConfig()
    secure = SecureRound(config, 1, ["a", "b", "c"], LENGTH)
    for party in secure.clients.values():
        party.secagg_setup(encode(secure.server.setup))
    adverts = [secure.clients[c].secagg.advertise() for c in "abc"]
    keys_for = secure.server.receive_keys(adverts)
    shares = [secure.clients[c].secagg.share(keys_for[c]) for c in "abc"]
    forwarded = secure.server.receive_shares(shares)
    bundle = forwarded["b"].shares[0]
    flipped = bytes([bundle.ciphertext[0] ^ 1]) + bundle.ciphertext[1:]
    bad = dataclasses.replace(forwarded["b"], shares=[dataclasses.replace(bundle, ciphertext=flipped)])
    with pytest.raises(ValueError, match=f"the shares from '{bundle.sender}' failed authentication"):
        secure.clients["b"].secagg.receive_shares(bad)


def test_client_never_reveals_both_secrets_of_a_neighbour(stage3):
    secure, masked, _ = stage3
    for c in ("c01", "c02", "c03"):
        secure.submit(c, encode(masked[c]))
    request = secure.server.unmask_request()
    both = dataclasses.replace(request, dropped=["c00"])
    with pytest.raises(ProtocolError, match="listed as survivors and dropped"):
        secure.clients["c01"].secagg.unmask(both)
    secure.clients["c01"].secagg.unmask(request)
    with pytest.raises(ProtocolError, match="already answered"):
        secure.clients["c01"].secagg.unmask(
            dataclasses.replace(request, survivors=["c01", "c02", "c03"], dropped=["c00"]))


def test_response_with_unrequested_share_is_rejected(stage3):
    secure, masked, _ = stage3
    for c in ("c01", "c02", "c03"):
        secure.submit(c, encode(masked[c]))
    request = secure.server.unmask_request()
    response = secure.clients["c01"].secagg.unmask(request)
    x, share = response.self_mask_shares["c00"]
    sneaky = UnmaskResponse("c01", 1, response.self_mask_shares, {"c00": [x, share]})
    with pytest.raises(ProtocolError, match="sent a share of 'c00' it was not asked for"):
        secure.server.finish([sneaky])


def test_messages_round_trip_and_garbage_is_refused():
    message = MaskedInput("a", 3, bytes(range(5)))
    back = decode(encode(message))
    assert back == message
    with pytest.raises(ValueError, match="not a secure-aggregation message"):
        decode(b"\xc1garbage")
    with pytest.raises(ValueError, match="unknown secure-aggregation message kind 'Evil'"):
        decode(encode({"kind": "Evil"}))


def test_shamir_any_t_shares_recover_and_fewer_do_not():
    secret = bytes(range(32))
    shares = shamir.split(secret, 3, [1, 2, 3, 4, 5])
    for subset in ([1, 2, 3], [2, 4, 5], [1, 3, 5]):
        assert shamir.combine({x: shares[x] for x in subset}, 3) == secret
    with pytest.raises(ValueError, match="2 shares, 3 needed"):
        shamir.combine({x: shares[x] for x in [1, 2]}, 3)
    try:
        assert shamir.combine({x: shares[x] for x in [1, 2]}, 2) != secret
    except ValueError:
        pass  # an out-of-range value: also not the secret


def test_neighbour_graph_is_symmetric_regular_and_seeded():
    ids = [f"c{i:03d}" for i in range(100)]
    graph = neighbour_graph(ids, 8, seed=1)
    assert all(len(n) == 8 for n in graph.values())
    assert all(a in graph[b] for a in ids for b in graph[a])
    assert graph == neighbour_graph(ids, 8, seed=1) and graph != neighbour_graph(ids, 8, seed=2)


def test_server_refuses_a_single_participant_and_bad_config():
    with pytest.raises(ProtocolError, match="at least 2 participants"):
        SecAggServer(SecureAggregationConfig(), 1, ["solo"], 4)
    with pytest.raises(ValueError, match="bits must be in 1..64"):
        SecureAggregationConfig(bits=65)


def test_fedmedian_matches_hand_median_and_refuses_masking(make_loop):
    updates = [Update(str(i), {"w": torch.tensor([float(i), -float(i) ** 2])}, 10) for i in range(4)]
    median = FedMedian().aggregate({"w": torch.zeros(2)}, updates)
    assert torch.allclose(median["w"], torch.tensor([1.5, -2.5]))
    with pytest.raises(ValueError, match="FedMedian needs each client's update, which secure aggregation hides"):
        make_loop(strategy=FedMedian(), secure_aggregation=SecureAggregationConfig())


@pytest.mark.parametrize("neighbours", [None, 2])
def test_masked_run_ends_within_bound_of_the_plain_run(make_loop, tmp_path, neighbours):
    """One round: the masked global adapter is the plain FedAvg one up to the fixed-point bound (and the
    float32 rounding of the result). Later rounds train from that slightly different start."""
    plain = make_loop(rounds=1, strategy=FedAvg(clients_per_round=3), output_dir=tmp_path / "plain").fit()
    config = SecureAggregationConfig(neighbours=neighbours)
    loop = make_loop(rounds=1, strategy=FedAvg(clients_per_round=3), output_dir=tmp_path / "masked",
                     secure_aggregation=config)
    masked = loop.fit()
    total = sum(len(c.datamodule.train_dataset) for c in loop.clients.values())
    bound = config.error_bound(3, total)
    for name in plain:
        difference = (masked[name].double() - plain[name].double()).abs().max().item()
        assert difference <= bound + torch.finfo(torch.float32).eps * plain[name].abs().max().item(), name
    assert any(not torch.equal(masked[n], plain[n]) for n in plain)  # it really went through the ring
    rows = [r for r in loop.history if r["split"] == "train"]
    assert len(rows) == 3 and all("num_examples" not in r and r["bytes_sent"] > 0 for r in rows)


def test_masked_run_resumes_bit_identically(make_loop, tmp_path):
    """Masks are fresh randomness every round, yet they cancel exactly: a resumed masked run is identical."""
    config = SecureAggregationConfig(neighbours=2, allow_fewer_than_three=True)
    full = make_loop(rounds=2, output_dir=tmp_path / "full", secure_aggregation=config).fit()
    make_loop(rounds=1, output_dir=tmp_path / "part", secure_aggregation=config).fit()
    resumed = make_loop(rounds=2, output_dir=tmp_path / "part", secure_aggregation=config).fit(resume=True)
    assert all(torch.equal(full[n], resumed[n]) for n in full)
