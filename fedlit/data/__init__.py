"""Data: loading through ``datasets``, the Shakespeare corpus, client splits and data modules."""

from fedlit.data.datamodule import IGNORE_INDEX, CausalLMCollator, CausalLMDataModule, pack, tokenize
from fedlit.data.federated import GLOBAL, DataConfig, FederatedData, build_federated_data
from fedlit.data.preferences import PreferenceDataConfig, PreferenceDataModule
from fedlit.data.shakespeare import load_shakespeare, parse_turns, prepare_shakespeare, strip_gutenberg
from fedlit.data.sources import load_records

__all__ = [
    "GLOBAL",
    "IGNORE_INDEX",
    "CausalLMCollator",
    "CausalLMDataModule",
    "DataConfig",
    "FederatedData",
    "PreferenceDataConfig",
    "PreferenceDataModule",
    "build_federated_data",
    "load_records",
    "load_shakespeare",
    "pack",
    "parse_turns",
    "prepare_shakespeare",
    "strip_gutenberg",
    "tokenize",
]
