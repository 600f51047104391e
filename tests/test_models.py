import pytest
import torch

from fedlit.models import ModelConfig, load_base_model, load_tokenizer


def test_loads_through_from_pretrained_frozen(tiny_model_dir):
    model = load_base_model(ModelConfig(str(tiny_model_dir), dtype="bfloat16"))
    assert model.dtype == torch.bfloat16
    assert not any(p.requires_grad for p in model.parameters())
    assert load_tokenizer(ModelConfig(str(tiny_model_dir))).pad_token == "<eos>"


def test_unknown_model_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model path '/no/such/model' is not a model directory"):
        load_base_model(ModelConfig("/no/such/model"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_tokenizer(ModelConfig(str(tmp_path)))


def test_unknown_hub_name_fails_clearly():
    with pytest.raises(OSError, match="could not load the tokenizer of model 'nobody/no-such-model'"):
        load_tokenizer(ModelConfig("nobody/no-such-model"))


def test_bad_dtype_is_named(tiny_model_dir):
    with pytest.raises(ValueError, match="unknown dtype 'float13'"):
        load_base_model(ModelConfig(str(tiny_model_dir), dtype="float13"))
