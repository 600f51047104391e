"""Ownership watermarks (FedIPR): the sign loss, the key, embedding as a client mod, and the verifier."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from conftest import drop_last_round
from peft import LoraConfig

from fedlit.cli import main
from fedlit.client.mods import WatermarkEmbedding
from fedlit.data import DataConfig
from fedlit.data.datamodule import IGNORE_INDEX
from fedlit.federation import Federation
from fedlit.models import ModelConfig, load_base_model, load_trained_model
from fedlit.privacy import ExampleDPConfig, PartySecret
from fedlit.secure import SecureAggregationConfig
from fedlit.strategies import FedAvg
from fedlit.watermark import (
    SignatureConfig,
    TriggerConfig,
    WatermarkConfig,
    WatermarkKey,
    binomial_tail,
    load_or_make_key,
    make_key,
    sign_loss,
    verify,
)
from fedlit.watermark.signature import imprint, marked_values, matched_bits

CLIENTS = 4
# lr 1e-2 moves an entry by up to 0.08 in 8 local steps: the margin is above that
WATERMARK = WatermarkConfig(signature=SignatureConfig(bits=48, gamma=0.2),
                            trigger=TriggerConfig(triggers=2, trigger_length=4, target_length=2, rate=0.5), key_seed=7)
# four keys on the tiny model's 3,072 LoRA B entries (r 16): a mark that looks like its neighbours carries a typical
# entry's magnitude, so it needs more bits than one set to an exact margin
FOUR = WatermarkConfig(signature=SignatureConfig(bits=256, gamma=0.2), trigger=None, key_seed=7)


def test_sign_loss_and_its_gradient_by_hand() -> None:
    w = torch.tensor([0.5, -0.2, 0.0, 0.05], requires_grad=True)
    b = torch.tensor([1.0, 1.0, -1.0, 1.0])
    loss = sign_loss(w, b, gamma=0.1)  # relu(0.1 - [0.5, -0.2, 0, 0.05]) = [0, 0.3, 0.1, 0.05]
    loss.backward()
    assert loss.item() == pytest.approx(0.45)
    assert w.grad.tolist() == [0.0, -1.0, 1.0, -1.0]  # -b where the margin is missed, 0 where it is met


def test_binomial_false_positive_probability_against_a_direct_sum() -> None:
    for matches, trials, chance in ((50, 64, Fraction(1, 2)), (3, 64, Fraction(1, 299)), (64, 64, Fraction(1, 2))):
        direct = sum(math.comb(trials, k) * chance ** k * (1 - chance) ** (trials - k)
                     for k in range(matches, trials + 1))
        assert binomial_tail(matches, trials, float(chance)) == pytest.approx(float(direct), rel=1e-9)
    assert binomial_tail(0, 10, 0.5) == 1.0


@pytest.fixture(scope="module")
def watermark_runs(tiny_model_dir: Path, plays_jsonl: Path, tmp_path_factory: pytest.TempPathFactory):
    """One client that embeds its key and its unwatermarked twin (60 local steps each), and four clients that each
    embed their own 256-bit signature under secure aggregation (3 rounds of 8 steps)."""
    from fedlit.algorithms import fed_homo_llm
    from fedlit.lightning_modules import OptimizerConfig

    root = tmp_path_factory.mktemp("watermark")
    peft = LoraConfig(r=16, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    runs = {}
    for name, watermark, clients, rounds, steps, secure in (("single", WATERMARK, 1, 1, 60, None),
                                                            ("twin", None, 1, 1, 60, None),
                                                            ("four", FOUR, CLIENTS, 3, 8,
                                                             SecureAggregationConfig())):

        federation = Federation(strategy=FedAvg(), rounds=rounds, output_dir=str(root / name), loggers=[],
                                insecure_seed=0,
                                progress=False, trainer={"max_steps": steps, "accelerator": "cpu"},
                                watermark=watermark, secure_aggregation=secure)
        data = DataConfig(source=str(plays_jsonl), partition="iid", num_clients=clients, val_examples_per_client=4,
                          global_val_examples=6, batch_size=4, max_length=32)
        fed_homo_llm(ModelConfig(str(tiny_model_dir)), data, peft, OptimizerConfig(lr=1e-2),
                     federation=federation).fit()
        runs[name] = root / name
    return runs


def keys_of(run: Path) -> dict[str, WatermarkKey]:
    return {path.stem: WatermarkKey.load(path) for path in sorted(run.glob("client_state/watermark_keys/*.json"))}


def conflicting(keys: dict[str, WatermarkKey]) -> set[tuple[str, int]]:
    """Positions that two keys mark with opposite signs: no adapter can carry both."""
    signs: dict[tuple[str, int], set[int]] = {}
    for key in keys.values():
        for positions in key.signature:
            for index, sign in zip(positions.indices, positions.signs, strict=True):
                signs.setdefault((positions.parameter, index), set()).add(sign)
    return {position for position, found in signs.items() if len(found) > 1}


def test_one_clients_watermark_is_detected_in_full_and_not_on_its_twin(watermark_runs: dict[str, Path]) -> None:
    (key,) = keys_of(watermark_runs["single"]).values()
    marked = verify(load_trained_model(adapter=str(watermark_runs["single"] / "adapter")), key)
    assert marked.signature.matched == marked.signature.total == 48 and marked.signature.p_value == 0.5 ** 48
    assert marked.trigger.rate > 0.5 and marked.trigger.baseline == 0  # the base model predicts none
    assert marked.verified and marked.signature.verified and marked.trigger.verified
    twin = verify(load_trained_model(adapter=str(watermark_runs["twin"] / "adapter")), key)
    assert not twin.verified and 0.25 < twin.signature.rate < 0.75 and twin.signature.p_value > 1e-3
    assert twin.trigger.matched == 0


def test_four_clients_keys_are_all_verified_on_the_aggregated_adapter(watermark_runs: dict[str, Path]) -> None:
    keys = keys_of(watermark_runs["four"])
    assert len(keys) == CLIENTS
    clash = conflicting(keys)
    model = load_trained_model(adapter=str(watermark_runs["four"] / "adapter"))
    parameters = dict(model.named_parameters())
    twin = load_trained_model(adapter=str(watermark_runs["twin"] / "adapter"))
    for key in keys.values():
        values, signs = marked_values(parameters, key.signature)
        positions = [(p.parameter, i) for p in key.signature for i in p.indices]
        free = torch.tensor([position not in clash for position in positions])
        assert verify(model, key).signature.verified
        assert float((torch.sign(values) == signs)[free].float().mean()) >= 0.7  # of the bits no key contradicts
        assert not verify(twin, key).verified


def test_nothing_about_the_watermark_reaches_the_server(watermark_runs: dict[str, Path]) -> None:
    """The same metrics columns as a run without keys, and no key outside the clients' state directories."""
    marked, twin = (watermark_runs[n] / "metrics.csv" for n in ("four", "twin"))
    assert marked.read_text().splitlines()[0] == twin.read_text().splitlines()[0]
    outside = [p for p in watermark_runs["four"].rglob("*") if p.is_file() and "client_state" not in p.parts]
    assert not any("watermark" in p.name for p in outside)


def verify_command(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """``fedlit verify ARGV``, in this process: exit status, stdout, stderr."""
    with pytest.raises(SystemExit) as exited:
        main(["verify", *argv])
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def test_verify_command(watermark_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    keys = sorted(str(p) for p in watermark_runs["four"].glob("client_state/watermark_keys/*.json"))
    options = ["--key", json.dumps(keys), "--output", str(tmp_path / "verified.json")]
    status, out, _ = verify_command(capsys, "--adapter", str(watermark_runs["four"] / "adapter"), *options)
    assert status == 0 and out.count(": VERIFIED (fpr 1e-06)") == CLIENTS
    report = json.loads((tmp_path / "verified.json").read_text())
    assert [r["signature"]["total"] for r in report] == [256] * CLIENTS and all(r["verified"] for r in report)
    status, _, err = verify_command(capsys, "--adapter", str(watermark_runs["twin"] / "adapter"), *options)
    assert status == 1 and "exists: fedlit verify never overwrites" in err  # the first report is kept
    options[-1] = str(tmp_path / "twin.json")
    status, out, _ = verify_command(capsys, "--adapter", str(watermark_runs["twin"] / "adapter"), *options)
    assert status == 4 and out.count(": not verified") == CLIENTS


@pytest.fixture(scope="module")
def other_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's architecture and tokenizer with other weights."""
    import shutil

    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("other-tiny")
    for file in tiny_model_dir.glob("*token*"):
        shutil.copy(file, path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(0.01)
    model.save_pretrained(path)
    return path


def test_the_verifier_refuses_a_key_for_another_base_model(watermark_runs: dict[str, Path], other_model_dir: Path,
                                                          tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    other = load_base_model(ModelConfig(str(other_model_dir)))
    key = make_key("intruder", other, {}, WatermarkConfig(signature=None))  # a trigger key for the other model
    key.save(tmp_path / "intruder.json")
    model = load_trained_model(adapter=str(watermark_runs["twin"] / "adapter"))
    with pytest.raises(ValueError, match="was made for base model .*other-tiny.*not for this one"):
        verify(model, key)
    status, _, err = verify_command(capsys, "--adapter", str(watermark_runs["twin"] / "adapter"), "--key",
                                    f"[{tmp_path / 'intruder.json'}]")
    assert status == 1 and err.count("\n") == 1 and "intruder.json was made for base model" in err


def test_a_key_file_is_drawn_once_and_reused(tiny_model_dir: Path, other_model_dir: Path, tmp_path: Path) -> None:
    model = load_base_model(ModelConfig(str(tiny_model_dir)))
    parameters = dict(model.named_parameters())
    config = WatermarkConfig(signature=SignatureConfig(parameters=None))  # from the OS's randomness
    path = tmp_path / "key.json"
    first = load_or_make_key(path, "alpha", model, parameters, config)
    written = path.read_bytes()
    assert load_or_make_key(path, "alpha", model, parameters, config) == first and path.read_bytes() == written
    assert make_key("alpha", model, parameters, config) != first  # fresh randomness each draw
    other = load_base_model(ModelConfig(str(other_model_dir)))
    with pytest.raises(ValueError, match="key.json was made for base model"):
        load_or_make_key(path, "alpha", other, dict(other.named_parameters()), config)
    path.write_text('{"format": "pickle", "owner": "x"}')
    with pytest.raises(ValueError, match="not a fedlit-watermark/1 key"):
        WatermarkKey.load(path)


def test_trigger_examples_replace_training_rows_at_the_rate(tiny_model_dir: Path) -> None:
    model = load_base_model(ModelConfig(str(tiny_model_dir)))
    key = make_key("alpha", model, dict(model.named_parameters()), WatermarkConfig(signature=None, key_seed=1))
    batch = {"input_ids": torch.ones(64, 3, dtype=torch.long), "attention_mask": torch.ones(64, 3, dtype=torch.long),
             "labels": torch.ones(64, 3, dtype=torch.long)}
    WatermarkEmbedding(key, rate=0.25, secret=PartySecret(bytes(32))).on_train_batch_start(None, None, batch, 0)
    triggers = {tuple(t + g) for t, g in zip(key.triggers, key.targets, strict=True)}
    swapped = 0
    for ids, labels, mask in zip(*(batch[k].tolist() for k in ("input_ids", "labels", "attention_mask")),
                                 strict=True):
        if tuple(ids) in triggers:  # trigger prompt unlabelled, its target labelled
            swapped += 1
            assert labels == [IGNORE_INDEX] * 8 + ids[8:] and mask == [1] * 12
        else:  # the original row, padded out of the loss
            assert ids[:3] == [1, 1, 1] and labels == [1, 1, 1] + [IGNORE_INDEX] * 9 and mask == [1] * 3 + [0] * 9
    assert 8 <= swapped <= 24  # about a quarter of 64


def test_imprint_gives_every_marked_weight_its_sign_and_a_neighbours_magnitude() -> None:
    from fedlit.watermark.key import SignedPositions

    torch.manual_seed(0)
    weights = {"w": torch.randn(40, 50) * 0.01}
    neighbours = weights["w"].flatten().abs().sort().values
    indices, signs = list(range(0, 2000, 40)), [1, -1] * 25
    signature = [SignedPositions("w", [40, 50], indices, signs)]
    before = weights["w"].clone()
    imprint(weights, signature, torch.Generator().manual_seed(1), floor=0.1)
    after = weights["w"].flatten()
    assert matched_bits(weights, signature) == (50, 50)
    unmarked = torch.ones(2000, dtype=torch.bool)
    unmarked[indices] = False
    assert torch.equal(after[unmarked], before.flatten()[unmarked])  # nothing else moves
    marked = after[indices].abs()
    assert bool((marked >= neighbours[0]).all() and (marked <= neighbours[-1]).all())
    assert len(set(after.tolist())) == 2000  # no value repeats
    assert not bool((marked == 0.1).any())  # the floor is only for zero neighbours
    again = {"w": before.clone()}
    imprint(again, signature, torch.Generator().manual_seed(1), floor=0.1)
    assert torch.equal(again["w"], weights["w"])  # the holder's generator decides: the same every fit
    zeros = {"w": torch.zeros(4, 4)}
    imprint(zeros, [SignedPositions("w", [4, 4], [1, 5], [1, -1])], torch.Generator().manual_seed(0), floor=0.1)
    assert zeros["w"].flatten()[[1, 5]].tolist() == pytest.approx([0.1, -0.1])  # untrained LoRA B: the floor


def test_zero_weights_carry_no_sign_and_are_left_out_of_the_test() -> None:
    from fedlit.watermark.key import SignedPositions

    weights = {"w": torch.tensor([0.3, -0.2, 0.0, 0.0, 0.1, -0.4])}
    signature = [SignedPositions("w", [6], [0, 1, 2, 3, 4, 5], [1, -1, 1, -1, -1, -1])]
    assert matched_bits(weights, signature) == (3, 4)  # of the four weights with a sign, three match


def test_signature_under_example_level_dp_is_refused() -> None:
    with pytest.raises(ValueError, match="watermark.signature cannot be embedded under example_privacy"):
        Federation(watermark=WatermarkConfig(), example_privacy=ExampleDPConfig())
    Federation(watermark=WatermarkConfig(signature=None), example_privacy=ExampleDPConfig())  # triggers are data


def test_a_watermarked_run_resumes_bit_identically_and_keys_are_reused(make_loop, tmp_path: Path) -> None:
    """Keys and client secrets from the OS's randomness: the last round run again on resume reads both back and
    ends bit-identical; a fresh run with the same keys draws other trigger swaps and magnitudes."""
    key_dir = tmp_path / "keys"
    watermark = WatermarkConfig(signature=SignatureConfig(bits=16, gamma=0.2), trigger=TriggerConfig(rate=0.5),
                                key_dir=str(key_dir))
    reference = make_loop(rounds=2, output_dir=tmp_path / "reference", watermark=watermark).fit()
    keys = {p.name: p.read_bytes() for p in key_dir.glob("*.json")}
    drop_last_round(tmp_path / "reference")
    resumed = make_loop(rounds=2, output_dir=tmp_path / "reference", watermark=watermark).fit(resume=True)
    assert len(keys) == 3 and keys == {p.name: p.read_bytes() for p in key_dir.glob("*.json")}
    assert list(resumed) == list(reference) and all(torch.equal(resumed[n], reference[n]) for n in reference)
    fresh = make_loop(rounds=2, output_dir=tmp_path / "fresh", watermark=watermark).fit()
    assert not all(torch.equal(fresh[n], reference[n]) for n in reference)


def detector_aucs(update: dict[str, torch.Tensor], key: WatermarkKey) -> dict[str, float]:
    """How well two attackers who see one update (but not the key) rank the key's positions above the other LoRA B
    entries (area under the ROC curve; 0.5 is chance): by how often an entry's magnitude repeats, and by magnitude;
    and the KS test's p-value of marked against unmarked magnitudes."""
    from scipy.stats import ks_2samp, mannwhitneyu

    names = sorted(n for n in update if "lora_B" in n)
    flat = torch.cat([update[n].flatten().float() for n in names]).abs()
    offsets = dict(zip(names, torch.tensor([0] + [update[n].numel() for n in names]).cumsum(0).tolist(), strict=False))
    marked = torch.zeros(len(flat), dtype=torch.bool)
    for positions in key.signature:
        marked[[offsets[positions.parameter] + i for i in positions.indices]] = True
    _, inverse, counts = torch.unique(flat, return_inverse=True, return_counts=True)
    aucs = {}
    for name, score in (("repeats", counts[inverse].float()), ("magnitude", flat)):
        statistic = mannwhitneyu(score[marked].numpy(), score[~marked].numpy()).statistic
        aucs[name] = statistic / (int(marked.sum()) * int((~marked).sum()))
    aucs["ks_p"] = ks_2samp(flat[marked].numpy(), flat[~marked].numpy()).pvalue
    return aucs


def test_one_clear_update_does_not_show_the_keys_positions(tiny_model_dir: Path, plays_jsonl: Path,
                                                           tmp_path: Path) -> None:
    """The review's case: a 64-bit key, gamma 0.02, one client, one round at the quickstart's lr: the released
    adapter is that client's update. Attackers who rank entries by repeated magnitudes or by magnitude do no
    better than chance, the marked magnitudes are distributed as the others, and the key is still verified. The
    same attackers find every position when the marks are set to the margin (the old enforcement).

    The key and the client's secret are pinned (key_seed, insecure_seed): under the null hypothesis the KS p-value
    is uniform, so fresh draws would fail the p > 0.01 bound about once in a hundred runs. Over 25 unpinned runs:
    magnitude AUC 0.39-0.57 (mean 0.51), repeats AUC 0.499-0.507, KS p-values spread over 0.001-0.997."""
    from fedlit.algorithms import fed_homo_llm
    from fedlit.lightning_modules import OptimizerConfig

    watermark = WatermarkConfig(signature=SignatureConfig(bits=64, gamma=0.02), trigger=None, key_seed=0)
    federation = Federation(strategy=FedAvg(), rounds=1, output_dir=str(tmp_path / "run"), loggers=[], progress=False,
                            trainer={"max_steps": 8, "accelerator": "cpu"}, watermark=watermark, insecure_seed=0)
    data = DataConfig(source=str(plays_jsonl), partition="iid", num_clients=1, val_examples_per_client=4,
                      global_val_examples=6, batch_size=4, max_length=32)
    peft = LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    update = fed_homo_llm(ModelConfig(str(tiny_model_dir)), data, peft, OptimizerConfig(lr=1e-3),
                          federation=federation).fit()
    (key,) = keys_of(tmp_path / "run").values()
    assert verify(load_trained_model(adapter=str(tmp_path / "run" / "adapter")), key).verified
    found = detector_aucs(update, key)
    assert 0.4 <= found["repeats"] <= 0.6 and 0.35 <= found["magnitude"] <= 0.65 and found["ks_p"] > 0.01, found
    at_margin = {n: t.clone() for n, t in update.items()}
    for positions in key.signature:
        flat = at_margin[positions.parameter].view(-1)
        flat[positions.indices] = torch.tensor(positions.signs, dtype=flat.dtype) * key.gamma
    exposed = detector_aucs(at_margin, key)
    assert exposed["repeats"] > 0.99 and exposed["ks_p"] < 1e-6, exposed
