"""Hardening (issue 12): bad input and hostile files are named in one line, exit non-zero, and never cost data.

Each test is numbered after the item of the issue it guards.
"""

import csv
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_cli_config

from fedlit.cli import main
from fedlit.data import DataConfig
from fedlit.federation import Federation
from fedlit.files import atomic_directory
from fedlit.lightning_modules import OptimizerConfig
from fedlit.models import ModelConfig
from fedlit.secure import SecureAggregationConfig
from fedlit.server.checkpoint import (
    MAGIC,
    CheckpointError,
    UnsafeCheckpoint,
    list_checkpoints,
    load_checkpoint,
    newest_valid_checkpoint,
)
from fedlit.server.run_dir import OutputDirError, check_fresh
from fedlit.strategies import DPFedAvg, FedAvg


@pytest.fixture
def config_file(tmp_path, tiny_model_dir, plays_jsonl):
    return write_cli_config(tmp_path, tiny_model_dir, plays_jsonl, loggers=[], trainer={"max_steps": 2,
                            "accelerator": "cpu"}, strategy={"class_path": "fedlit.strategies.FedAvg",
                                                             "init_args": {"clients_per_round": 3}})


def fails(capsys, *args: str, code: int = 1) -> str:
    """Run the CLI, expect exit status ``code``, return the one line it printed."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fedlit:")]
    assert len(lines) == 1, lines
    return lines[0]


class _Evil:
    """Unpickling this runs ``touch`` on the marker: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _with_header(body: bytes) -> bytes:
    import hashlib

    return MAGIC + b" " + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


# 1. A crafted pickle in checkpoints/ is refused and runs nothing.
def test_1_crafted_checkpoint_is_refused_and_runs_nothing(make_loop, tmp_path):
    make_loop(rounds=1).fit()
    marker = tmp_path / "code-ran"
    buffer = io.BytesIO()
    torch.save({"round": 1, "payload": _Evil(marker)}, buffer)
    evil = tmp_path / "run" / "checkpoints" / "round-0002.ckpt"
    evil.write_bytes(_with_header(buffer.getvalue()))  # a valid digest: only weights_only stands in the way
    with pytest.raises(UnsafeCheckpoint, match=r"round-0002.ckpt was refused: it holds objects that would run code"):
        make_loop(rounds=3).fit(resume=True)
    evil.write_bytes(buffer.getvalue())  # a bare pickle, as torch.save writes it: not a fedlit checkpoint
    with pytest.raises(CheckpointError, match="not a fedlit checkpoint"):
        load_checkpoint(evil)
    assert not marker.exists()


# 2. One run per output_dir: a second process fails at once naming the holder; a changed setup cannot resume.
def test_2_a_second_run_into_a_locked_output_dir_fails_naming_the_holder(config_file, tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; "
                               "from fedlit.server.run_dir import lock_output_dir; "
                               f"lock_output_dir({str(run_dir)!r}); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = fails(capsys, "fit", "--config", str(config_file))
        assert f"in use by another fedlit run (pid {holder.pid})" in line
        assert os.listdir(run_dir) == [".fedlit.lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()


def test_2_resume_with_a_different_model_or_data_is_refused(make_loop, tiny_model_dir, plays_jsonl, tmp_path):
    plays = plays_jsonl
    from transformers import AutoModelForCausalLM

    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    model = AutoModelForCausalLM.from_pretrained(other)
    torch.manual_seed(1)
    model.model.layers[0].self_attn.q_proj.weight.data.normal_()
    model.save_pretrained(other)
    make_loop(rounds=1).fit()
    with pytest.raises(CheckpointError, match="written with a different model setup"):
        make_loop(rounds=2, model=ModelConfig(str(other))).fit(resume=True)
    with pytest.raises(CheckpointError, match="written with a different data setup"):
        make_loop(rounds=2, data=DataConfig(source=str(plays), num_clients=3, val_examples_per_client=4,
                                            global_val_examples=6, batch_size=8, max_length=32)).fit(resume=True)


# 3. A new run into a folder with an earlier run's files is refused before anything is written; files fedlit did
#    not write survive.
def test_3_fresh_run_over_earlier_outputs_writes_nothing(config_file, tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "adapter").mkdir(parents=True)
    (run_dir / "adapter" / "my_notes.txt").write_text("mine")
    (run_dir / "metrics.csv").write_text("old")
    line = fails(capsys, "fit", "--config", str(config_file))
    assert "already holds a run (metrics.csv, adapter/)" in line and "--resume true" in line
    assert sorted(os.listdir(run_dir)) == [".fedlit.lock", "adapter", "metrics.csv"]
    assert (run_dir / "metrics.csv").read_text() == "old"


def test_3_writing_an_output_directory_keeps_files_fedlit_did_not_write(tmp_path):
    target = tmp_path / "adapter"
    with atomic_directory(target) as tmp:
        (tmp / "adapter_model.safetensors").write_text("v1")
    (target / "my_notes.txt").write_text("mine")
    with atomic_directory(target) as tmp:
        (tmp / "adapter_model.safetensors").write_text("v2")
    assert (target / "adapter_model.safetensors").read_text() == "v2"
    assert (target / "my_notes.txt").read_text() == "mine"


# 4. --resume keeps the rounds before it in the Lightning CSVLogger's file.
def test_4_resume_keeps_earlier_rounds_in_the_logger_file(config_file, tmp_path):
    main(["fit", "--config", str(config_file), "--rounds", "1", "--loggers", "null"])
    main(["fit", "--config", str(config_file), "--rounds", "2", "--loggers", "null", "--resume", "true"])
    with open(tmp_path / "run" / "logs" / "metrics.csv") as f:
        steps = [int(float(row["step"])) for row in csv.DictReader(f)]
    assert set(steps) == {0, 1, 2}
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows_per_round = {r: sum(1 for row in csv.DictReader(f) if row["round"] == str(r)) for r in (0,)}
    assert steps.count(0) == rows_per_round[0]  # each round-0 row once, not twice


# 5. Damaged newest checkpoints are named and skipped on resume; names sort past round 9999.
@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_5_a_damaged_newest_checkpoint_falls_back_to_the_round_before(make_loop, tmp_path, damage, caplog):
    whole = make_loop(rounds=3, output_dir=tmp_path / "whole").fit()
    make_loop(rounds=2).fit()
    newest = tmp_path / "run" / "checkpoints" / "round-0002.ckpt"
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[-200] ^= 0x10  # inside the tensor data, which unpickling alone would not notice
    else:
        data = bytearray()
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="round-0002.ckpt (is damaged|is empty)"):
        load_checkpoint(newest)
    with caplog.at_level(logging.WARNING, logger="fedlit.server.checkpoint"):
        resumed = make_loop(rounds=3).fit(resume=True)
    assert "round-0002.ckpt" in caplog.text and "falling back to the round before" in caplog.text
    assert all(torch.equal(whole[n], resumed[n]) for n in whole)


def test_5_checkpoint_names_sort_by_round_number_past_9999(tmp_path):
    for server_round in (9999, 10000, 2):
        (tmp_path / f"round-{server_round:04d}.ckpt").write_bytes(b"")
    assert [r for r, _ in list_checkpoints(tmp_path)] == [2, 9999, 10000]
    assert newest_valid_checkpoint(tmp_path) is None  # all empty: named in warnings, none usable


# 6. SIGTERM / SIGINT during a round: non-zero status, one line naming the round and how to resume.
@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.long)])
def test_6_a_signal_during_a_round_exits_non_zero_and_the_run_resumes(config_file, tmp_path, signum):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "fedlit.cli", "fit", "--config", str(config_file), "--rounds", "40"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    began = time.monotonic()
    while not (run_dir / "checkpoints" / "round-0001.ckpt").exists():
        assert time.monotonic() - began < 120 and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum
    (line,) = [line for line in err.splitlines() if line.startswith("fedlit:")]
    assert f"interrupted by {signal.Signals(signum).name} during round" in line and "--resume true" in line
    assert not (run_dir / "adapter").exists()
    (last, _), *_ = reversed(list_checkpoints(run_dir / "checkpoints"))
    load_checkpoint(run_dir / "checkpoints" / f"round-{last:04d}.ckpt")  # still valid
    subprocess.run([*command[:-1], str(last + 1), "--resume", "true"], check=True, capture_output=True)
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()


# 7. Nothing trained is an error with the reasons; what can be checked up front is checked up front.
def test_7_a_run_in_which_every_client_is_excluded_exits_3_with_the_reason(config_file, tmp_path, capsys):
    line = fails(capsys, "fit", "--config", str(config_file), "--faults", '{"max_update_norm": 1e-12}', code=3)
    assert "nothing was trained" in line and "exceeds the bound 1e-12" in line
    assert not (tmp_path / "run" / "adapter").exists()


def test_7_impossible_federations_are_refused_before_round_0(config_file, tmp_path, capsys):
    line = fails(capsys, "fit", "--config", str(config_file), "--faults", '{"min_clients": 4}')
    assert "faults.min_clients is 4 but only 3 clients are sampled per round" in line
    line = fails(capsys, "fit", "--config", str(config_file), "--secure_aggregation", '{"bits": 8}')
    assert "secure_aggregation.bits 8 is too narrow" in line and "need at least" in line
    line = fails(capsys, "fit", "--config", str(config_file), "--trainer.strategy", "fsdp")
    assert "trainer.strategy 'fsdp': a client fit spans devices with DDP only" in line
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(ValueError, match="optimizer.lr must be a finite number >= 0, got nan"):
        OptimizerConfig(lr=float("nan"))


def test_7_the_ring_check_matches_what_masking_can_hold():
    """The narrowest ring the check accepts masks the largest weighted update; one bit less overflows, and the
    check refuses it."""
    import numpy as np

    from fedlit.secure import ring

    largest = np.full(3, 1000 * 1.0)  # 1000 examples x clip 1
    for bits, fits in ((23, True), (22, False)):
        config = SecureAggregationConfig(bits=bits, scale=2.0**10, clip=1.0)
        limit = (1 << (bits - 1)) // 4 - 1  # as SecAggClient.mask computes it for 4 participants
        if fits:
            config.check_ring(num_clients=4, max_weight=1000)
            ring.encode(largest, config.scale, bits, limit)
        else:
            with pytest.raises(ValueError, match="bits 22 is too narrow.*need at least 23 bits"):
                config.check_ring(num_clients=4, max_weight=1000)
            with pytest.raises(OverflowError):
                ring.encode(largest, config.scale, bits, limit)


# 8. Ranges are checked when the config is read.
@pytest.mark.parametrize(("key", "value", "message"), [
    ("max_length", 0, "data.max_length must be >= 2, got 0"),
    ("max_length", 1, "data.max_length must be >= 2, got 1"),
    ("batch_size", 0, "data.batch_size must be >= 1, got 0"),
])
def test_8_out_of_range_data_settings_are_named(config_file, capsys, key, value, message):
    assert message in fails(capsys, "fit", "--config", str(config_file), f"--data.{key}", str(value))


# 9. Duplicated clients and more clients than exist are errors.
def test_9_duplicate_or_missing_clients_are_errors(config_file, capsys):
    line = fails(capsys, "fit", "--config", str(config_file), "--data.clients", "[alpha, alpha, beta]")
    assert "data.clients lists ['alpha'] more than once" in line
    line = fails(capsys, "fit", "--config", str(config_file), "--data.num_clients", "9")
    assert "data.num_clients is 9 but" in line and "has only 3 values of play" in line


# 10. Empty or null text is dropped with a count per client (or refused); "None" never becomes training text.
def test_10_empty_and_null_records_are_dropped_with_a_count(tmp_path, tokenizer, plays_jsonl, caplog):
    from fedlit.data import build_federated_data

    records = [json.loads(line) for line in plays_jsonl.read_text().splitlines()]
    records[0]["text"], records[1]["text"], records[50]["text"] = None, "  ", ""
    path = tmp_path / "holes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = DataConfig(source=str(path), num_clients=3, val_examples_per_client=4, global_val_examples=6,
                        max_length=32)
    with caplog.at_level(logging.WARNING, logger="fedlit.data.federated"):
        data = build_federated_data(config, tokenizer)
    assert "dropped 3 records" in caplog.text and "(alpha: 2, beta: 1)" in caplog.text
    texts = [tokenizer.decode(e["input_ids"]) for dm in data.clients.values()
             for split in (dm.train_dataset, dm.val_dataset) for e in split]
    assert not any("None" in t for t in texts)
    assert sum(len(dm.train_dataset) + len(dm.val_dataset) for dm in data.clients.values()) + 6 == 120 - 3
    with pytest.raises(ValueError, match=r"holes.jsonl row 1 has no 'text' \(empty or null\) \(and 2 more records\)"):
        build_federated_data(DataConfig(**{**config.__dict__, "empty_records": "error"}), tokenizer)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from fedlit.models import load_tokenizer

    return load_tokenizer(ModelConfig(str(tiny_model_dir)))


# 11. Teachers must share the tokenizer itself, not only its size.
def test_11_a_teacher_with_another_tokenizer_of_the_same_size_is_refused(tiny_model_dir, plays_jsonl, tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    from fedlit.algorithms import fed_hetero_llm

    ours = AutoTokenizer.from_pretrained(tiny_model_dir)
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=len(ours), special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["Completely different words for another vocabulary entirely."] * 50, trainer)
    theirs = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<eos>")
    assert len(theirs) == len(ours)
    teacher_dir = tmp_path / "teacher"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(teacher_dir)
    theirs.save_pretrained(teacher_dir)
    teachers = {p: ModelConfig(str(tiny_model_dir)) for p in ("alpha", "beta", "gamma")}
    teachers["beta"] = ModelConfig(str(teacher_dir))
    with pytest.raises(ValueError, match=r"teacher of client 'beta'.*share one tokenizer, but \d+ tokens differ: '"):
        fed_hetero_llm(teachers=teachers, mentee=ModelConfig(str(tiny_model_dir)),
                       data=DataConfig(source=str(plays_jsonl), num_clients=3, val_examples_per_client=4,
                                       global_val_examples=6, max_length=32),
                       federation=Federation(output_dir=str(tmp_path / "hetero"), loggers=[], progress=False))


# 12. Secure aggregation over fewer than 3 clients is refused unless allowed; a capped neighbour count warns.
def test_12_secure_aggregation_needs_three_clients_per_round(make_loop, tmp_path, caplog):
    with pytest.raises(ValueError, match=r"over 2 client\(s\) per round hides nothing.*allow_fewer_than_three"):
        make_loop(secure_aggregation=SecureAggregationConfig(neighbours=5))
    with caplog.at_level(logging.WARNING, logger="fedlit.secure.config"):
        make_loop(rounds=1, secure_aggregation=SecureAggregationConfig(neighbours=5, allow_fewer_than_three=True))
    assert "neighbours 5: a round of 2 clients has only 1 others" in caplog.text


# 13. `make run` twice: one line saying what is there and what to do, in make's terms.
def test_13_a_second_make_run_says_what_to_do(tmp_path, monkeypatch):
    (tmp_path / "checkpoints").mkdir()
    monkeypatch.setenv("MAKELEVEL", "1")
    with pytest.raises(OutputDirError) as error:
        check_fresh(tmp_path)
    message = str(error.value)
    assert "\n" not in message and "checkpoints/" in message
    assert all(hint in message for hint in ("make run ARGS='--resume true'", "make run OUTPUT_DIR=", "make clean"))
    makefile = (Path(__file__).parent.parent / "Makefile").read_text()
    assert "--output_dir $(OUTPUT_DIR) $(ARGS)" in makefile


# 14. Errors after parsing: one line naming the key, file, client or value; the traceback only with --debug.
def test_14_errors_are_one_named_line(config_file, tmp_path, tiny_model_dir, capsys):
    config = str(config_file)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, no_tokenizer / name)
    cases = [
        (["--data.clients", "[]"], "data.clients is empty"),
        (["--data.val_examples_per_client", "0"], "data.val_examples_per_client must be >= 1, got 0"),
        (["--data.source", str(empty)], f"data.source '{empty}' is an empty file"),
        (["--model.name_or_path", str(no_tokenizer)], f"tokenizer of model '{no_tokenizer}' from {no_tokenizer}: no "
                                                      "tokenizer files there"),
        (["--data.template", "{}:{text}"], "data.template '{}:{text}' has a positional field"),
        (["--strategy.init_args.clients_per_round", "9"], "clients_per_round=9 but only 3 clients exist"),
        (["--secure_aggregation", '{"bits": 99}'], "secure_aggregation.bits must be in 1..64, got 99"),
        (["--privacy", '{"delta": 2}'], "0 < delta < 1, got 1.0, 0.1 and 2.0"),
    ]
    for args, message in cases:
        line = fails(capsys, "fit", "--config", config, *args)
        assert message in line, (args, line)
    assert not (tmp_path / "run" / "checkpoints").exists()  # the corrected re-run is not blocked
    with pytest.raises(SystemExit) as exit_info:  # rounds: 0 is a parse error, before any model loads
        main(["fit", "--config", config, "--rounds", "0"])
    assert exit_info.value.code == 2 and 'key "rounds"' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit", "--config", config, "--data.clients", "[]", "--debug", "true"])
    assert "Traceback (most recent call last)" in capsys.readouterr().err


# 15. The accountant: no silenced convergence failures, exact fractional orders, and a tighter PRV option.
def test_15_accountant_is_exact_and_offers_prv(caplog):
    from opacus.accountants import RDPAccountant

    from fedlit.privacy import ClientDPConfig, subsampled_gaussian_epsilon

    with caplog.at_level(logging.WARNING):
        rdp = subsampled_gaussian_epsilon(100, 10, 1.0, 50, 1e-5, poisson=True)
        prv = subsampled_gaussian_epsilon(100, 10, 1.0, 50, 1e-5, poisson=True, accountant="prv")
        fixed = subsampled_gaussian_epsilon(100, 10, 1.0, 50, 1e-5, poisson=False)
    assert "failed to converge" not in caplog.text
    reference = RDPAccountant()
    for _ in range(50):
        reference.step(noise_multiplier=1.0, sample_rate=0.1)
    assert rdp == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    assert 0.6 * rdp < prv < 0.95 * rdp and fixed > 0
    with pytest.raises(ValueError, match="privacy.accountant prv needs strategy.sampling: poisson"):
        DPFedAvg(FedAvg(clients_per_round=2), ClientDPConfig(accountant="prv"), 10)
    poisson = DPFedAvg(FedAvg(2, sampling="poisson"), ClientDPConfig(accountant="prv"), 10).accountant
    assert poisson.epsilon(3) > 0


# 16. Milestone 3's review of the newer commands: nothing overwritten, nothing exits 0 that did not do what was asked,
# settings checked before round 0, resume refuses a changed setup, every message one line naming the file/key/value.
def test_16_config_and_parse_errors_are_one_line_and_exit_2(config_file, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: [1\n")
    for argv in (["fit", "--config", str(bad)], ["fit", f"--config={bad}"]):
        line = fails(capsys, *argv, code=2)
        assert f"config file '{bad}' is not valid YAML" in line and "line 2" in line
    for args, message in ((["--model.quantization", '{"bits": 3}'], 'Parser key "bits": Expected a typing.Literal'),
                          (["--backend.class_path", "nosuch.Backend"], "No module named 'nosuch'"),
                          (["--rounds", "0"], 'Parser key "rounds"')):
        assert message in fails(capsys, "fit", "--config", str(config_file), *args, code=2)


def test_16_settings_the_adapter_cannot_take_are_refused_before_round_0(config_file, tmp_path, capsys):
    for watermark, message in (({"signature": {"bits": 10 ** 6}, "trigger": None},
                                "watermark.signature.bits is 1000000 but the parameters it may use ('lora_B')"),
                               ({"signature": {"parameters": "nosuch"}, "trigger": None},
                                "watermark.signature.parameters 'nosuch' matches no trainable parameter")):
        line = fails(capsys, "fit", "--config", str(config_file), "--watermark", json.dumps(watermark))
        assert message in line, line
        assert not list((tmp_path / "run").glob("checkpoints/*.ckpt"))


def test_16_resume_refuses_a_changed_watermark_or_compression(config_file, tmp_path, capsys):
    watermark = json.dumps({"signature": {"bits": 16}, "trigger": None})
    main(["fit", "--config", str(config_file), "--rounds", "1", "--watermark", watermark])
    changed = json.dumps({"signature": {"bits": 32}, "trigger": None})
    for args, part in ((["--watermark", changed], "watermark"),
                       (["--watermark", watermark, "--compression", '{"bits": 4}'], "compression")):
        line = fails(capsys, "fit", "--config", str(config_file), "--rounds", "2", "--resume", "true", *args)
        assert f"was written with a different {part} setup" in line, line


def test_16_verify_never_overwrites_and_names_a_malformed_key(config_file, tmp_path, capsys):
    from fedlit.watermark.key import KEY_FORMAT

    key = tmp_path / "k.json"
    key.write_text("secret key material")
    assert "--output" in fails(capsys, "verify", "--adapter", "x", "--key", f"[{key}]", "--output", str(key))
    assert key.read_text() == "secret key material"
    good = {"format": KEY_FORMAT, "owner": "a", "base_model": "m", "fingerprint": "f",
            "signature": [{"parameter": "w", "shape": [2, 3], "indices": [0, 5], "signs": [1, -1]}]}
    cases = [({"format": KEY_FORMAT, "owner": "a"}, "missing field(s) base_model, fingerprint"),
             ([1, 2], "expected a JSON object, got a list"),
             ({**good, "signature": [{**good["signature"][0], "indices": [0, 6]}]},
              "indices [6] are outside its 6 entries"),
             ({**good, "signature": []}, "it holds no signature positions and no triggers"),
             ({**good, "signature": [{**good["signature"][0], "signs": [1, 5]}]}, "signs must be -1 or 1, got [5]")]
    for i, (content, message) in enumerate(cases):
        path = tmp_path / f"bad-{i}.json"
        path.write_text(json.dumps(content))
        line = fails(capsys, "verify", "--adapter", "x", "--key", f"[{path}]")
        assert f"watermark key {path}" in line and message in line, line


def test_16_a_sweep_count_below_one_is_refused(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"method": "grid", "metric": {"name": "m"},
                                     "parameters": {"rounds": {"values": [1, 2]}}}))
    for count in ("-1", "0"):
        assert "must be a whole number >= 1" in fails(capsys, "sweep", str(sweep), "--count", count)
    assert not (tmp_path / "outputs").exists()


def test_16_what_cannot_apply_is_refused_naming_it(tiny_model_dir, tmp_path, capsys):
    from fedlit.models import load_base_model

    with pytest.raises(ValueError, match="it has 2 blocks, and a layer drop keeps the first and last and needs at "
                                         "least 3: drop keep_blocks"):
        load_base_model(ModelConfig(str(tiny_model_dir), keep_blocks=2))


def test_16_a_swept_key_the_config_lacks_fails_before_any_run(config_file, tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({
        "method": "grid", "metric": {"name": "summary/val_loss"},
        "parameters": {"optimizer.lr": {"values": [0.01]}, "optimiser.lr": {"values": [0.1, 0.2]}},
        "command": ["${env}", "${interpreter}", "-m", "fedlit", "fit", "--config", str(config_file), "${args}"]}))
    line = fails(capsys, "sweep", str(sweep), "--output_dir", str(tmp_path / "sweep"))
    assert "run 0" in line and "optimiser.lr" in line, line
    assert not (tmp_path / "sweep").exists()
