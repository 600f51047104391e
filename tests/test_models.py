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


def test_gradient_checkpointing_recomputes_each_block_and_gives_the_same_adapter_gradients(tiny_model_dir):
    """Each block runs twice per training step (forward, then again in backward) and the LoRA gradients are the
    ones without checkpointing; in evaluation nothing is recomputed."""
    from peft import LoraConfig, get_peft_model

    batch = torch.arange(2 * 12).reshape(2, 12) % 50 + 3
    grads, calls = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        base = load_base_model(ModelConfig(str(tiny_model_dir), gradient_checkpointing=checkpointing))
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                lora_dropout=0.0))
        counted, mlp = [], base.model.layers[0].mlp  # (inside the block; a recompute fires no module hooks)
        mlp.forward = lambda *args, forward=mlp.forward, counted=counted, **kwargs: (counted.append(1)
                                                                                   or forward(*args, **kwargs))
        model.train()
        model(input_ids=batch, labels=batch).loss.backward()
        model.eval()
        with torch.no_grad():
            model(input_ids=batch)
        calls.append(len(counted))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert calls == [2, 3]  # train + eval; with checkpointing the block's forward once more in backward
    assert grads[0].keys() == grads[1].keys() and sum(float(g.abs().sum()) for g in grads[0].values()) > 0
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])
