"""Quantized updates on the wire: codes, bounds, unbiasedness, FedAvg, error feedback, secure aggregation, DP."""

import csv
import dataclasses

import numpy as np
import pytest
import torch

from fedlit.client.round_store import client_state_dir
from fedlit.compression import CompressionConfig
from fedlit.compression.bits import pack_bits, unpack_bits
from fedlit.compression.quantize import dequantize, error_bound, from_wire, quantize, quantize_to_grid, to_wire
from fedlit.compression.residual import ResidualStore
from fedlit.lightning_modules import OptimizerConfig
from fedlit.payload import flatten, to_bytes
from fedlit.privacy import ClientDPConfig
from fedlit.secure import SecureAggregationConfig
from fedlit.secure.simulation import SecureRound
from fedlit.seeds import client_seed
from fedlit.strategies import FedAvg


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 7, 8, 13, 16, 17, 31, 32, 33, 63, 64])
def test_bits_pack_and_unpack_exactly(bits):
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 2**bits, size=1001, dtype=np.uint64) if bits < 64 else rng.integers(
        0, 2**63, size=1001, dtype=np.uint64) * np.uint64(2)
    packed = pack_bits(values, bits)
    assert len(packed) == (1001 * bits + 7) // 8
    assert np.array_equal(unpack_bits(packed, bits, 1001), values)
    with pytest.raises(ValueError, match="do not hold"):
        unpack_bits(packed[:-1], bits, 1001)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("stochastic", [True, False])
def test_decoding_errs_within_the_documented_bound_per_block(bits, stochastic):
    config = CompressionConfig(bits=bits, block_size=64, stochastic=stochastic)
    rng = np.random.default_rng(0)
    values = rng.standard_t(3, size=10_000) * 1e-3  # heavy tails: blocks of very different scales
    values[:64] = 0.0  # an all-zero block decodes to zeros
    decoded = dequantize(quantize(values, config, rng if stochastic else None), config)
    bound = error_bound(values, config)
    assert np.all(np.abs(decoded - values) <= bound * (1 + 1e-6))
    assert np.all(decoded[:64] == 0)
    per_block = np.repeat(np.abs(np.pad(values, (0, -len(values) % 64))).reshape(-1, 64).max(axis=1), 64)
    assert np.allclose(bound, per_block[: len(values)] / config.levels * (2 if stochastic else 1), rtol=1e-6)


@pytest.mark.parametrize("bits", [2, 4])
def test_stochastic_rounding_is_unbiased(bits):
    config = CompressionConfig(bits=bits, block_size=8)
    values = np.array([1.0, -1.0, 0.3, -0.71, 0.05, 0.0, 0.999, -0.5])  # one block: scale 1
    draws = 20_000
    rng = np.random.default_rng(1)
    mean = np.mean([dequantize(quantize(values, config, rng), config) for _ in range(draws)], axis=0)
    step = 2 / config.levels  # each draw is off by less than a step: std <= step / 2
    assert np.all(np.abs(mean - values) < 5 * (step / 2) / np.sqrt(draws)), mean - values
    nearest = dequantize(quantize(values, config, None), config)
    assert np.abs(nearest - values).max() > 10 * np.abs(mean - values).max()  # nearest rounding is biased


def test_four_bit_updates_take_at_most_a_seventh_of_float32():
    length = 30 * 2 * (576 * 8 + 8 * 576 + 576 * 8 + 8 * 192) // 2  # SmolLM2-135M's LoRA r=8 on q/v
    update = np.random.default_rng(0).normal(scale=1e-3, size=length)
    float32 = len(to_bytes({"update": torch.from_numpy(update).float()}))
    for bits, ratio in ((8, 1 / 3.5), (4, 1 / 7), (2, 1 / 12)):
        config = CompressionConfig(bits=bits)
        wire = to_wire(quantize(update, config, np.random.default_rng(0)), config)
        assert len(wire) <= float32 * ratio, (bits, len(wire) / float32)
        back = from_wire(wire, config, length)
        assert np.array_equal(dequantize(back, config), dequantize(quantize(update, config,
                                                                            np.random.default_rng(0)), config))


def test_a_malformed_compressed_update_is_refused_by_name():
    config = CompressionConfig(bits=4)
    wire = to_wire(quantize(np.ones(100), config, None), config)
    with pytest.raises(ValueError, match="not a compressed update"):
        from_wire(b"garbage", config, 100)
    with pytest.raises(ValueError, match=r"\(2,\) scales, expected 4 float32"):
        from_wire(wire, config, 200)
    with pytest.raises(ValueError, match="bits must be in 2..8"):
        CompressionConfig(bits=16)


def test_residual_store_reads_the_newest_earlier_round_and_keeps_what_a_rerun_needs(tmp_path):
    store = ResidualStore(client_state_dir(tmp_path, "run1", "A Midsummer Night's Dream"))
    assert np.array_equal(store.load(1, 3), np.zeros(3))
    store.save(1, np.array([1.0, 2.0, 3.0]))
    store.save(3, np.array([4.0, 5.0, 6.0]))  # read round 1's
    assert np.array_equal(store.load(3, 3), [1, 2, 3])  # a re-run of round 3 still reads round 1's
    assert np.array_equal(store.load(4, 3), [4, 5, 6])
    store.save(4, np.zeros(3))  # read round 3's: round 1's goes
    assert sorted(p.name for p in store.directory.iterdir()) == ["residual-0003.safetensors",
                                                                 "residual-0004.safetensors"]
    with pytest.raises(ValueError, match="holds 3 values, the adapter has 5"):
        store.load(9, 5)


class Recording(FedAvg):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rounds = []

    def aggregate(self, global_payload, updates):
        self.rounds.append((global_payload, list(updates)))
        return super().aggregate(global_payload, updates)


def test_fedavg_of_compressed_updates_is_within_the_bound_of_uncompressed(make_loop, tmp_path):
    exact, compressed = Recording(clients_per_round=3), Recording(clients_per_round=3)
    config = CompressionConfig(bits=4, error_feedback=False)
    plain = make_loop(rounds=1, strategy=exact, output_dir=tmp_path / "plain").fit()
    quantized = make_loop(rounds=1, strategy=compressed, compression=config, output_dir=tmp_path / "q").fit()
    (start, updates), (_, sent) = exact.rounds[0], compressed.rounds[0]
    deltas = {u.client_id: flatten(u.payload) - flatten(start) for u in updates}
    bound = sum(error_bound(d, config) for d in deltas.values()) / 3  # equal example counts
    difference = np.abs(flatten(quantized) - flatten(plain))
    assert np.all(difference <= bound + 1e-6) and difference.max() > 0
    for update in sent:  # the server decoded what each client sent: its own update within the bound
        decoded = flatten(update.payload) - flatten(start)
        assert np.all(np.abs(decoded - deltas[update.client_id]) <= error_bound(deltas[update.client_id], config)
                      + 1e-6)
    rows = [r for r in csv.DictReader(open(tmp_path / "q" / "metrics.csv")) if r["split"] == "train"]
    plain_rows = [r for r in csv.DictReader(open(tmp_path / "plain" / "metrics.csv")) if r["split"] == "train"]
    for row, plain_row in zip(rows, plain_rows, strict=True):  # real encoded bytes: 4-bit codes + float32 scales
        assert int(row["bytes_sent"]) <= int(plain_row["bytes_sent"]) / 7


def test_error_feedback_carries_the_residual_and_resume_is_bit_identical(make_loop, tmp_path):
    config = CompressionConfig(bits=2)

    def build(rounds, name):
        return make_loop(rounds=rounds, compression=config, output_dir=tmp_path / name)

    reference = build(4, "reference").fit()
    interrupted = build(2, "interrupted")
    interrupted.fit()
    residuals = sorted((tmp_path / "interrupted" / "client_state" / interrupted.run_id).glob("*/residual-*"))
    assert residuals, "no residual kept"
    resumed_loop = build(4, "interrupted")
    resumed = resumed_loop.fit(resume=True)
    assert resumed_loop.run_id == interrupted.run_id
    for name in reference:
        assert torch.equal(resumed[name], reference[name]), name
    without_feedback = make_loop(rounds=4, compression=CompressionConfig(bits=2, error_feedback=False),
                                 output_dir=tmp_path / "plain").fit()
    assert any(not torch.equal(without_feedback[n], reference[n]) for n in reference)  # the residual did count


def test_the_residual_is_what_the_client_meant_to_send_minus_what_it_sent(make_loop, tmp_path):
    strategy = Recording(clients_per_round=3)
    loop = make_loop(rounds=1, strategy=strategy, compression=CompressionConfig(bits=2, stochastic=False))
    loop.fit()
    exact = Recording(clients_per_round=3)
    make_loop(rounds=1, strategy=exact, output_dir=tmp_path / "exact").fit()
    (start, sent), (_, meant) = strategy.rounds[0], exact.rounds[0]
    sent = {u.client_id: flatten(u.payload) - flatten(start) for u in sent}
    for update in meant:
        store = ResidualStore(client_state_dir(loop.output_dir / "client_state", loop.run_id, update.client_id))
        residual = store.load(2, len(flatten(start)))
        expected = flatten(update.payload) - flatten(start) - sent[update.client_id]
        assert np.allclose(residual, expected, atol=1e-6) and np.abs(residual).max() > 0


def test_compressed_updates_under_secure_aggregation_sum_exactly():
    config, compression = SecureAggregationConfig(clip=0.05), CompressionConfig(bits=4)
    rng = np.random.default_rng(0)
    updates = {f"c{i}": (rng.normal(scale=0.01, size=1000), int(rng.integers(1, 50))) for i in range(5)}
    ring = config.compressed_ring(compression, 5, max_weight=50)
    assert ring.bits == int(np.ceil(np.log2(5 * (50 * 7 + 1)))) + 1 == 12
    step = config.clip / compression.grid_levels
    codes = {c: quantize_to_grid(u, compression, config.clip, np.random.default_rng(1))
             for c, (u, _) in updates.items()}
    secure = SecureRound(ring, 1, list(updates), 1000)
    secure.mask_and_submit(lambda c: (codes[c] * step, updates[c][1]))
    summed, total = secure.finish()
    assert total == sum(n for _, n in updates.values())
    expected = sum(n * codes[c] for c, (_, n) in updates.items())
    assert np.array_equal(np.rint(summed / step), expected) and np.allclose(summed, expected * step, atol=1e-12)
    assert np.all(np.abs(summed / total - sum(n * u for u, n in updates.values()) / total) <= step)
    again = SecureRound(ring, 2, list(updates), 1000)
    again.exchange_keys()
    masked = again.clients["c0"].secagg.mask(codes["c0"] * step, updates["c0"][1])
    assert len(masked.packed) == (1001 * 12 + 7) // 8  # 12-bit ring elements, packed


def test_secure_aggregation_with_compression_trains_on_the_shared_grid(make_loop, tmp_path):
    compression = CompressionConfig(bits=8, stochastic=False, error_feedback=False)
    secure = SecureAggregationConfig(clip=0.05)
    exact = Recording(clients_per_round=3)
    make_loop(rounds=1, strategy=exact, output_dir=tmp_path / "exact").fit()
    masked = make_loop(rounds=1, strategy=FedAvg(clients_per_round=3), compression=compression,
                       secure_aggregation=secure, output_dir=tmp_path / "masked").fit()
    start, updates = exact.rounds[0]
    step = secure.clip / compression.grid_levels
    weights = [u.num_examples for u in updates]
    grid = sum(n * quantize_to_grid(flatten(u.payload) - flatten(start), compression, secure.clip, None) * step
               for n, u in zip(weights, updates, strict=True)) / sum(weights)
    assert np.allclose(flatten(masked) - flatten(start), grid, atol=1e-7)
    rows = [r for r in csv.DictReader(open(tmp_path / "masked" / "metrics.csv")) if r["split"] == "train"]
    ring_bits = secure.compressed_ring(compression, 3, max(weights)).bits
    assert all(int(r["bytes_sent"]) < len(grid) * 8 / 2 for r in rows) and ring_bits < 32  # packed: not words


def test_client_dp_with_compression_clips_on_the_server_and_excludes_no_one(make_loop, tmp_path):
    privacy = ClientDPConfig(noise_multiplier=0.0, clip_norm=0.05)
    loop = make_loop(rounds=2, privacy=privacy, compression=CompressionConfig(bits=2, stochastic=True),
                     strategy=FedAvg(clients_per_round=3))
    loop.fit()
    train = [r for r in loop.history if r["split"] == "train"]
    assert train and not any(r.get("excluded") for r in train)
    assert all(r["update_norm"] <= 0.05 * 1.5 for r in train)  # quantized: about the clip norm, not excluded
    step = flatten(loop.global_payload) - flatten(make_loop(rounds=1).module_factory().trainable_state_dict())
    assert np.linalg.norm(step) <= 2 * 0.05 * (1 + 1e-5) * 3 / 3  # two rounds, each a mean of re-clipped updates


def test_client_dp_noise_with_compression_is_the_servers_added_after_decoding(make_loop, tmp_path):
    """lr 0: every update is zero and quantizes to zero, so the released change times the denominator is exactly the
    server's noise (pinned here), continuous, not on the clients' grid: clip, quantize, clip again, noise."""
    from fedlit.privacy import PartySecret

    privacy = ClientDPConfig(noise_multiplier=1.0, clip_norm=0.5)
    loop = make_loop(rounds=1, privacy=privacy, compression=CompressionConfig(bits=2), insecure_seed=4,
                     strategy=FedAvg(clients_per_round=3), optimizer=OptimizerConfig(lr=0.0))
    start = flatten(loop.module_factory().trainable_state_dict())
    released = (flatten(loop.fit()) - start) * 3
    noise = PartySecret.fresh("the server", insecure_seed=4).numpy("dp-noise", 1).normal(0.0, 0.5, len(start))
    assert np.allclose(released, noise, atol=1e-6)
    with pytest.raises(ValueError, match="noise_multiplier > 0 with secure_aggregation and compression"):
        make_loop(privacy=privacy, compression=CompressionConfig(bits=2), secure_aggregation=SecureAggregationConfig())


def test_downlink_compression_sends_the_global_adapter_quantized(make_loop, tmp_path):
    loop = make_loop(rounds=1, compression=CompressionConfig(bits=8, downlink=True))
    loop.fit()
    plain = make_loop(rounds=1, output_dir=tmp_path / "plain")
    plain.fit()
    received = [r["bytes_received"] for r in loop.history if r["split"] == "train"]
    plain_received = [r["bytes_received"] for r in plain.history if r["split"] == "train"]
    assert all(q < p / 3.5 for q, p in zip(received, plain_received, strict=True))


def test_client_seeds_differ_so_roundings_are_independent():
    assert client_seed(0, 1, "alpha") != client_seed(0, 1, "beta")


def test_a_fit_request_with_compression_crosses_the_flower_wire_as_plain_data():
    from fedlit.backends import FitIns
    from fedlit.flower.envelope import KINDS
    from fedlit.wire import pack, unpack

    ins = FitIns(b"adapter", seed=3, server_round=2, run_id="abc",
                 mods={"compression": dataclasses.asdict(CompressionConfig(bits=4))})
    assert unpack(pack(ins), KINDS, "fedlit request") == ins
