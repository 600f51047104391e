"""Every PEFT method federates end to end, and exactly its trainable tensors travel."""

import pytest
import torch
from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM

from fedlit.lightning_modules import OptimizerConfig
from fedlit.strategies import FedAvg

METHODS = {
    "lora": lambda: LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    "dora": lambda: LoraConfig(r=4, target_modules=["q_proj"], use_dora=True, task_type="CAUSAL_LM"),
    "rslora": lambda: LoraConfig(r=4, target_modules=["o_proj"], use_rslora=True, task_type="CAUSAL_LM"),
    "ia3": lambda: IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"],
                             task_type="CAUSAL_LM"),
    "prompt_tuning": lambda: PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
    "p_tuning": lambda: PromptEncoderConfig(num_virtual_tokens=4, encoder_hidden_size=16, task_type="CAUSAL_LM"),
    "prefix_tuning": lambda: PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_federates_exactly_its_trainable_tensors(method, make_loop, tiny_model_dir):
    reference = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), METHODS[method]())
    expected = {n: p.shape for n, p in reference.named_parameters() if p.requires_grad}

    loop = make_loop(rounds=1, peft=METHODS[method](), strategy=FedAvg(clients_per_round=3),
                     optimizer=OptimizerConfig(lr=5e-2))
    initial = loop.module_factory().trainable_state_dict()
    final = loop.fit()
    assert {n: t.shape for n, t in final.items()} == expected
    changed = [n for n in final if not torch.equal(final[n], initial[n])]
    assert changed, f"{method}: no tensor changed after a round"
    if method == "p_tuning":  # the prompt encoder's MLP travels, not only its embedding
        assert any("mlp_head" in n for n in changed)


def test_prompt_tuning_loss_covers_real_tokens_only(make_loop):
    """Virtual-token logits are dropped: the loss covers the same positions as for any other method.

    Reference: peft's own label-based loss with the first real token masked (peft would otherwise also
    score predicting it from the last virtual token, a position other methods do not have)."""
    loop = make_loop(rounds=1, peft=METHODS["prompt_tuning"]())
    module = loop.module_factory().eval()
    batch = next(iter(loop.evaluation.global_val.val_dataloader()))
    from fedlit.lightning_modules import shifted_token_loss

    ours, _ = shifted_token_loss(module(batch), batch["labels"])
    labels = batch["labels"].clone()
    labels[:, 0] = -100
    with torch.no_grad():
        theirs = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              labels=labels).loss
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
