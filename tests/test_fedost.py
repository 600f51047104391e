"""FedOST: emulator construction, what clients hold, plug-in round trip, end-to-end runs."""

import copy
import hashlib
import json

import pytest
import torch
from conftest import with_federation
from peft import LoraConfig
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from fedlit.algorithms import fed_ost
from fedlit.data import DataConfig
from fedlit.lightning_modules import OptimizerConfig
from fedlit.models import ModelConfig
from fedlit.models.offsite import OffsiteConfig, adapter_state, build_emulator, decoder_blocks, emulator_plan, plug_in


def deep_model(kind: str, vocab_size: int, eos: int):
    """A 6-block model whose every tensor is distinct (norms jittered off their all-ones init), so that
    content hashes identify blocks."""
    torch.manual_seed(0)
    model = _deep_model(kind, vocab_size, eos)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    return model


def _deep_model(kind: str, vocab_size: int, eos: int):
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, eos_token_id=eos, pad_token_id=eos, bos_token_id=eos,
            tie_word_embeddings=True))
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=6, n_head=4, n_positions=128,
                                      eos_token_id=eos, bos_token_id=eos))


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def deep_model_dir(request, tiny_model_dir, tmp_path_factory):
    """A 6-block model of the family, with the tiny tokenizer, saved for from_pretrained."""
    path = tmp_path_factory.mktemp(f"deep-{request.param}")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    deep_model(request.param, len(tokenizer), tokenizer.eos_token_id).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


@pytest.mark.parametrize("ratio, kept", [(0.5, 13), (0.25, 6)])
def test_plan_keeps_adapters_and_evenly_spaced_middle(ratio, kept):
    plan = emulator_plan(30, OffsiteConfig(2, 2, ratio))  # SmolLM2-135M's 30 blocks, 26 in the middle
    assert plan[:2] == [0, 1] and plan[-2:] == [28, 29]
    middle = plan[2:-2]
    assert len(middle) == kept and middle[0] == 2 and middle[-1] == 27
    gaps = {b - a for a, b in zip(middle, middle[1:], strict=False)}
    assert max(gaps) - min(gaps) <= 1  # uniform layer drop
    assert emulator_plan(6, OffsiteConfig(1, 1, 1.0)) == list(range(6))
    with pytest.raises(ValueError, match="must leave a middle"):
        emulator_plan(4, OffsiteConfig(2, 2, 0.5))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_emulator_of_the_whole_middle_is_the_full_model(kind):
    full = deep_model(kind, 50, 0).eval()
    emulator, plan = build_emulator(full, OffsiteConfig(1, 1, 1.0))
    ids = torch.randint(0, 50, (2, 9))
    assert torch.allclose(emulator(ids).logits, full(ids).logits, atol=1e-6)
    smaller, plan = build_emulator(full, OffsiteConfig(1, 1, 0.5))
    assert plan == [0, 1, 4, 5] and len(decoder_blocks(smaller)[1]) == 4
    assert sum(p.numel() for p in smaller.parameters()) < sum(p.numel() for p in full.parameters())


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_plug_in_round_trip_is_exact(kind):
    full = deep_model(kind, 50, 0)
    offsite = OffsiteConfig(1, 1, 0.5)
    emulator, plan = build_emulator(full, offsite)
    tuned = {n: t + torch.randn_like(t) for n, t in adapter_state(emulator, plan, offsite).items()}
    before = copy.deepcopy(full.state_dict())
    plug_in(full, tuned, plan)
    again, _ = build_emulator(full, offsite)
    back = adapter_state(again, plan, offsite)
    assert back.keys() == tuned.keys() and all(torch.equal(back[n], tuned[n]) for n in tuned)
    prefix, _ = decoder_blocks(full)
    changed = {n for n, t in full.state_dict().items() if not torch.equal(t, before[n])}
    assert changed and all(n.startswith((f"{prefix}.0.", f"{prefix}.5.")) for n in changed)


def run_fed_ost(model_dir, data_file, tmp_path, **overrides):
    kwargs = dict(
        model=ModelConfig(str(model_dir)),
        data=DataConfig(source=str(data_file), num_clients=3, val_examples_per_client=4, global_val_examples=6,
                        batch_size=4, max_length=32),
        offsite=OffsiteConfig(1, 1, 0.5), optimizer=OptimizerConfig(lr=1e-2), rounds=2, output_dir=tmp_path / "ost",
        loggers=[], progress=False, trainer_kwargs={"max_steps": 3, "accelerator": "cpu"},
    )
    return fed_ost(**with_federation({**kwargs, **overrides}))


def test_clients_hold_no_dropped_block(deep_model_dir, plays_jsonl, tmp_path):
    run = run_fed_ost(deep_model_dir, plays_jsonl, tmp_path)
    prefix, blocks = decoder_blocks(run.strategy.full_model())
    dropped = [i for i in range(len(blocks)) if i not in run.strategy.plan]
    assert dropped == [2, 3]
    secret = {digest(t) for i in dropped for t in blocks[i].state_dict().values()}
    package = load_file(str(tmp_path / "ost" / "client_package" / "model.safetensors"))
    client_model = run.module_factory().model
    for held in (package, client_model.state_dict()):
        assert not {digest(t) for t in held.values()} & secret
        indices = {int(n.split(f"{prefix}.")[1].split(".")[0]) for n in held if f"{prefix}." in n}
        assert indices == set(range(len(run.strategy.plan)))  # emulator numbering: 4 blocks
    run.fit()
    assert not {digest(t) for t in client_model.state_dict().values()} & secret


@pytest.mark.parametrize("peft", [None, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])], ids=["full", "lora"])
def test_fed_ost_end_to_end_and_plugged_in_export(tiny_model_dir, plays_jsonl, tmp_path, peft):
    # The 2-block tiny model: adapter = the top block; emulator ratio 1.0 keeps the bottom one, so the
    # emulator is the full model and plug-in must score exactly like the tuned emulator.
    run = run_fed_ost(tiny_model_dir, plays_jsonl, tmp_path, offsite=OffsiteConfig(0, 1, 1.0), peft=peft)
    run.fit()
    report = json.loads((tmp_path / "ost" / "offsite.json").read_text())
    assert report["full_zero_shot"]["loss"] == pytest.approx(report["emulator_zero_shot"]["loss"], abs=1e-5)
    assert report["emulator_tuned"]["loss"] < report["emulator_zero_shot"]["loss"]
    assert report["plug_in"]["loss"] == pytest.approx(report["emulator_tuned"]["loss"], abs=1e-5)
    assert report["plan"] == [0, 1]
    trainable = report["parameters"]["adapter"]
    if peft is None:  # the whole top block travels
        assert trainable == sum(p.numel() for p in decoder_blocks(run.strategy.full_model())[1][1].parameters())
    else:  # LoRA on the top block's q and v only
        assert all(".layers.1." in n and "lora_" in n for n in run.global_payload)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "ost" / "plugged_in")
    assert all(torch.equal(exported.state_dict()[n], t) for n, t in run.strategy.full_model().state_dict().items())


def test_fed_ost_refuses_prompt_tuning(tiny_model_dir, plays_jsonl, tmp_path):
    from peft import PromptTuningConfig

    with pytest.raises(ValueError, match="offsite adapters take LoRA or full tuning"):
        run_fed_ost(tiny_model_dir, plays_jsonl, tmp_path, offsite=OffsiteConfig(0, 1, 1.0),
                    peft=PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"))


def test_fed_ost_adapters_aggregate_under_masking(tiny_model_dir, plays_jsonl, tmp_path):
    from fedlit.secure import SecureAggregationConfig

    plain = run_fed_ost(tiny_model_dir, plays_jsonl, tmp_path / "plain", offsite=OffsiteConfig(0, 1, 1.0), rounds=1)
    masked = run_fed_ost(tiny_model_dir, plays_jsonl, tmp_path / "masked", offsite=OffsiteConfig(0, 1, 1.0), rounds=1,
                         secure_aggregation=SecureAggregationConfig())
    plain.fit(), masked.fit()
    for name, tensor in plain.global_payload.items():
        assert torch.allclose(masked.global_payload[name], tensor, atol=1e-6), name


def test_distillation_brings_the_emulator_closer_to_the_full_model(deep_model_dir, plays_jsonl, tmp_path):
    from fedlit.lightning_modules.knowledge_distillation import DistillationConfig

    def emulator_gap(run):
        """MSE between the hidden states entering the top adapter block, emulator (client package) vs full."""
        emulator = AutoModelForCausalLM.from_pretrained(tmp_path / run / "ost" / "client_package")
        ids = torch.tensor([[3, 17, 42, 8, 99, 5, 61, 23]])
        with torch.no_grad():
            got = emulator(input_ids=ids, output_hidden_states=True).hidden_states[-2]
            want = built.strategy.full_model()(input_ids=ids, output_hidden_states=True).hidden_states[-2]
        return float(((got - want) ** 2).mean())

    built = run_fed_ost(deep_model_dir, plays_jsonl, tmp_path / "plain")
    distillation = DistillationConfig(steps=30, lr=3e-3, source=str(plays_jsonl), exclude={"play": ["alpha"]},
                                      max_length=32, batch_size=4)
    run_fed_ost(deep_model_dir, plays_jsonl, tmp_path / "distilled", distillation=distillation)
    assert emulator_gap("distilled") < 0.5 * emulator_gap("plain")
    with pytest.raises(KeyError, match="exclude names column 'act'"):
        run_fed_ost(deep_model_dir, plays_jsonl, tmp_path / "bad",
                    distillation=DistillationConfig(steps=1, source=str(plays_jsonl), exclude={"act": ["1"]}))


def test_the_owners_watermark_survives_client_tuning_and_its_key_stays_with_the_owner(tiny_model_dir, plays_jsonl,
                                                                                      tmp_path):
    from fedlit.models import load_base_model, load_trained_model
    from fedlit.watermark import SignatureConfig, WatermarkConfig, WatermarkKey, verify

    # the imprinted magnitudes are the block's own kind (nothing shows where the key is), so tuning at the test's lr
    # flips some: enough bits verify anyway
    owner = WatermarkConfig(signature=SignatureConfig(bits=256, gamma=0.2, parameters=None), trigger=None, key_seed=3)
    run = run_fed_ost(tiny_model_dir, plays_jsonl, tmp_path, offsite=OffsiteConfig(0, 1, 1.0), owner_watermark=owner,
                      insecure_seed=0)  # the owner's imprinted magnitudes pinned: the bits held are the same every run
    run.fit()
    key = WatermarkKey.load(tmp_path / "ost" / "watermark_keys" / "owner.json")
    assert key.bits == 256 and all(p.parameter.startswith("model.layers.1.") for p in key.signature)  # adapter block
    plugged = verify(load_trained_model(model=str(tmp_path / "ost" / "plugged_in")), key)
    assert plugged.signature.rate >= 0.65 and plugged.verified  # after the clients tuned the adapter block (69% here)
    assert not verify(load_base_model(ModelConfig(str(tiny_model_dir))), key).verified  # the model before the imprint
    assert not [p for p in (tmp_path / "ost" / "client_package").rglob("*") if "watermark" in p.name]
    with pytest.raises(ValueError, match="the owner imprints a signature only"):
        run_fed_ost(tiny_model_dir, plays_jsonl, tmp_path / "bad", owner_watermark=WatermarkConfig())
