"""The one test on the real SmolLM2-135M-Instruct: prepared from the packaged GGUF, then federated briefly."""

import csv
import json

import pytest

from fedlit.algorithms import fed_homo_llm
from fedlit.data import DataConfig
from fedlit.federation import Federation
from fedlit.lightning_modules import OptimizerConfig
from fedlit.models import DEFAULT_MODEL, ModelConfig, load_base_model, prepare_default_model
from fedlit.strategies import FedAvg


@pytest.mark.slow
def test_default_model_prepares_loads_and_learns_shakespeare(tmp_path):
    model_dir = prepare_default_model()
    assert "quantization_config" not in json.loads((model_dir / "config.json").read_text())
    model = load_base_model(ModelConfig(DEFAULT_MODEL))
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    del model

    loop = fed_homo_llm(
        data=DataConfig(clients=["hamlet", "macbeth"], train_examples_per_client=32, val_examples_per_client=8,
                        global_val_examples=16, max_length=48),
        optimizer=OptimizerConfig(lr=1e-3),
        federation=Federation(strategy=FedAvg(clients_per_round=2), rounds=1, output_dir=str(tmp_path), loggers=[],
                              progress=False, trainer={"max_steps": 3, "accelerator": "cpu"}),
    )
    loop.fit()
    with open(tmp_path / "metrics.csv") as f:
        losses = {row["round"]: float(row["loss"]) for row in csv.DictReader(f) if row["client"] == "global"}
    assert 2.0 < losses["0"] < 8.0, losses  # a pretrained model, not a random one (ln 49152 = 10.8)
    assert losses["1"] < losses["0"]
