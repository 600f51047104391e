"""Tiny random-initialised models and small data, written to temp dirs and loaded back through from_pretrained."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach a model hub; set before transformers is imported
os.environ["HF_DATASETS_OFFLINE"] = "1"

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

PLAYS = {
    "alpha": ["To be or not to be, that is the question.", "The rest is silence, my good lord."],
    "beta": ["Fair is foul and foul is fair.", "Out, damned spot! out, I say!"],
    "gamma": ["Now is the winter of our discontent.", "A horse! a horse! my kingdom for a horse!"],
}


def play_records(n_per_play: int = 40) -> list[dict[str, str]]:
    """Deterministic speaking turns; each play has its own phrasing, so a model can learn something."""
    records = []
    for play, lines in PLAYS.items():
        for i in range(n_per_play):
            records.append({"play": play, "character": f"SPEAKER{i % 3}", "text": lines[i % len(lines)]})
    return records


def preference_records(n_per_play: int = 40) -> list[dict[str, str]]:
    """Which play is the line from: the right play chosen, the next play in the list rejected."""
    plays = list(PLAYS)
    return [{"play": r["play"], "prompt": f"{r['character']}: {r['text']}\nPlay:", "chosen": f" {r['play']}",
             "rejected": f" {plays[(plays.index(r['play']) + 1) % len(plays)]}"} for r in play_records(n_per_play)]


@pytest.fixture(autouse=True, scope="session")
def _wandb_runs_in_a_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """W&B runs that tests start (configs/wandb.yaml among the shipped configs) stay out of the checkout."""
    os.environ.setdefault("WANDB_DIR", str(tmp_path_factory.mktemp("wandb")))
    os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer trained on the test text."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([r["text"] for r in play_records()] + ["SPEAKER0:\n"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<eos>")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, bos_token_id=fast.eos_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def other_tokenizer_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer Llama with a different tokenizer (SentencePiece-style unigram, "▁" for spaces, 200 entries) trained on
    the same text: a model the tiny one shares no vocabulary layout with."""
    path = tmp_path_factory.mktemp("other-tokenizer-llama")
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=["<pad>", "</s>"], unk_token="<pad>")
    tokenizer.train_from_iterator([r["text"] for r in play_records()] + ["SPEAKER0:\n"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>", unk_token="<pad>")
    fast.save_pretrained(path)
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=24, intermediate_size=48, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, bos_token_id=fast.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def plays_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "plays.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in play_records()))
    return path


@pytest.fixture(scope="session")
def preferences_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("preferences") / "preferences.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in preference_records()))
    return path


@pytest.fixture
def one_thread():
    """The local run uses as many torch threads as each Ray worker (1): then results agree bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def drop_last_round(output_dir: Path) -> int:
    """Delete a finished run's newest round checkpoint, so that ``fit(resume=True)`` runs that round again (as after
    a crash in it); return that round."""
    from fedlit.server.checkpoint import list_checkpoints

    last, path = list_checkpoints(Path(output_dir) / "checkpoints")[-1]
    path.unlink()
    return last


@pytest.fixture
def make_loop(tiny_model_dir: Path, plays_jsonl: Path, tmp_path: Path):
    """A small FedHomoLLM run on the tiny model; keyword arguments override its parts."""
    from peft import LoraConfig

    from fedlit.algorithms import fed_homo_llm
    from fedlit.data import DataConfig
    from fedlit.lightning_modules import OptimizerConfig
    from fedlit.models import ModelConfig
    from fedlit.strategies import FedAvg

    def build(**overrides):
        kwargs = {
            "model": ModelConfig(str(tiny_model_dir)),
            "data": DataConfig(source=str(plays_jsonl), num_clients=3, val_examples_per_client=4,
                               global_val_examples=6, batch_size=4, max_length=32),
            "peft": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1),
            "optimizer": OptimizerConfig(lr=1e-2),
            "strategy": FedAvg(clients_per_round=2),
            "rounds": 3,
            "output_dir": tmp_path / "run",
            "loggers": [],
            "progress": False,
            "trainer_kwargs": {"max_steps": 4, "accelerator": "cpu"},
        }
        kwargs.update(overrides)
        return fed_homo_llm(**with_federation(kwargs))

    return build


def write_cli_config(directory: Path, model_dir: Path, data_file: Path, **overrides) -> Path:
    """A ``fedlit fit`` YAML config for the tiny model and the test plays; ``overrides`` replace top-level keys."""
    import yaml

    config = {
        "rounds": 2,
        "output_dir": str(directory / "run"),
        "progress": False,
        "model": {"name_or_path": str(model_dir)},
        "data": {"source": str(data_file), "num_clients": 3, "val_examples_per_client": 4,
                 "global_val_examples": 6, "batch_size": 4, "max_length": 32},
        "peft": {"class_path": "peft.LoraConfig",
                 "init_args": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
        "optimizer": {"lr": 0.01},
        "strategy": {"class_path": "fedlit.strategies.FedAvg", "init_args": {"clients_per_round": 2}},
        "trainer": {"max_steps": 3, "accelerator": "cpu"},
        **overrides,
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def with_federation(kwargs: dict) -> dict:
    """Algorithm keyword arguments with the Federation's keys (and ``trainer_kwargs``, its ``trainer``) gathered
    into one ``federation``, so tests can override any of them by name."""
    from fedlit.federation import FEDERATION_KEYS, Federation

    kwargs = dict(kwargs)
    shared = {key: kwargs.pop(key) for key in list(kwargs) if key in FEDERATION_KEYS}
    if "trainer_kwargs" in kwargs:
        shared["trainer"] = kwargs.pop("trainer_kwargs")
    return {**kwargs, "federation": Federation(**shared)}
