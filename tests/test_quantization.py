"""k-bit frozen bases (QLoRA) in every algorithm, on the tiny model through the real from_pretrained path."""

import csv
import json

import bitsandbytes as bnb
import pytest
import torch
from peft import LoHaConfig, LoraConfig, PeftModel
from test_fed_co import build as build_fed_co
from test_fed_co import llm_dir  # noqa: F401 - the fixture
from test_fed_hetero import build as build_fed_hetero
from test_fed_hetero import four_block_dir  # noqa: F401 - the fixture
from test_fedost import run_fed_ost
from transformers import AutoModelForCausalLM

from fedlit.data import GLOBAL
from fedlit.lightning_modules import OptimizerConfig
from fedlit.models import ModelConfig, QuantizationConfig, load_base_model
from fedlit.models.offsite import OffsiteConfig, decoder_blocks

NF4 = QuantizationConfig(bits=4, quant_type="nf4", compute_dtype="float32")
KBIT_LAYERS = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)


def kbit_linears(model: torch.nn.Module) -> int:
    return sum(isinstance(m, KBIT_LAYERS) for m in model.modules())


def global_losses(output_dir):
    with open(output_dir / "metrics.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r["client"] == GLOBAL and r["split"] == "val"]


@pytest.mark.parametrize("quantization", [NF4, QuantizationConfig(bits=8)], ids=["nf4", "int8"])
def test_a_kbit_base_with_lora_trains_and_its_adapter_reloads_with_plain_peft(make_loop, tiny_model_dir, tmp_path,
                                                                              quantization):
    loop = make_loop(model=ModelConfig(str(tiny_model_dir), quantization=quantization), rounds=3,
                     optimizer=OptimizerConfig(lr=3e-2))
    first, second = loop.module_factory(), loop.module_factory()
    assert first.model is second.model and kbit_linears(first.model) == 2 * 7  # every block linear, one base
    loop.fit()
    losses = global_losses(loop.output_dir)
    assert losses[-1] < losses[0]
    config = ModelConfig(str(tiny_model_dir), quantization=quantization)
    batch = {k: v for k, v in next(iter(loop.evaluation.global_val.val_dataloader())).items()
             if k in ("input_ids", "attention_mask", "labels")}
    with torch.no_grad():
        quantized = PeftModel.from_pretrained(load_base_model(config), loop.output_dir / "adapter").eval()
        full = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                         loop.output_dir / "adapter").eval()
        served = first.model.eval()
        on_quantized, on_full = quantized(**batch), full(**batch)
        assert torch.allclose(on_quantized.logits, served(**batch).logits, atol=1e-5)  # the model the run trained
    assert 0 < abs(on_full.loss - on_quantized.loss) < 0.05 * on_quantized.loss  # close, not equal


def test_a_kbit_run_resumes_bit_identically(make_loop, tiny_model_dir, tmp_path):
    model = ModelConfig(str(tiny_model_dir), quantization=NF4)
    reference = make_loop(model=model, rounds=2, output_dir=tmp_path / "reference").fit()
    make_loop(model=model, rounds=1, output_dir=tmp_path / "interrupted").fit()
    resumed = make_loop(model=model, rounds=2, output_dir=tmp_path / "interrupted").fit(resume=True)
    assert all(torch.equal(resumed[n], reference[n]) for n in reference)


def test_a_peft_method_without_4bit_layers_is_refused_by_name(make_loop, tiny_model_dir):
    with pytest.raises(ValueError, match="peft LOHA cannot adapt a 4-bit quantized base"):
        make_loop(model=ModelConfig(str(tiny_model_dir), quantization=NF4),
                  peft=LoHaConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="model.quantization.bits must be 4 or 8, got 3"):
        QuantizationConfig(bits=3)


def test_fed_hetero_quantizes_teachers_and_the_mentee(four_block_dir, tiny_model_dir, plays_jsonl,  # noqa: F811
                                                      tmp_path):
    teacher = ModelConfig(str(four_block_dir), quantization=QuantizationConfig(bits=8))
    loop = build_fed_hetero(four_block_dir, tiny_model_dir, plays_jsonl, tmp_path,
                            teachers={"alpha": teacher, "beta": ModelConfig(str(tiny_model_dir)), "gamma": teacher},
                            mentee=ModelConfig(str(four_block_dir), keep_blocks=3, quantization=NF4))
    modules = {cid: c.module_factory() for cid, c in loop.clients.items()}
    assert kbit_linears(modules["alpha"].teacher) == 4 * 7 and kbit_linears(modules["beta"].teacher) == 0
    assert len(decoder_blocks(modules["alpha"].model)[1]) == 3 and kbit_linears(modules["alpha"].model) == 3 * 7
    final = loop.fit()
    assert all("lora_" in n for n in final)


def test_fed_co_quantizes_the_server_llm_and_the_clients_slm(llm_dir, tiny_model_dir, plays_jsonl,  # noqa: F811
                                                             tmp_path):
    loop = build_fed_co(llm_dir, tiny_model_dir, plays_jsonl, tmp_path / "co",
                        llm=ModelConfig(str(llm_dir), quantization=QuantizationConfig(bits=8)),
                        slm=ModelConfig(str(tiny_model_dir), quantization=NF4), rounds=1)
    assert kbit_linears(loop.module_factory().model) == 2 * 7
    loop.fit()
    assert kbit_linears(loop.strategy.llm.model) == 4 * 7
    assert (tmp_path / "co" / "llm_adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("peft", [None, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])], ids=["full", "lora"])
def test_fed_ost_quantizes_the_emulated_blocks_not_the_adapters(tiny_model_dir, plays_jsonl, tmp_path, peft):
    run = run_fed_ost(tiny_model_dir, plays_jsonl, tmp_path, offsite=OffsiteConfig(0, 1, 1.0), peft=peft,
                      model=ModelConfig(str(tiny_model_dir), quantization=NF4))
    client_model = run.module_factory().model
    _, blocks = decoder_blocks(client_model)
    assert kbit_linears(blocks[0]) == 7 and kbit_linears(blocks[1]) == 0  # emulated block / adapter block
    assert kbit_linears(run.strategy.full_model()) == 0  # the owner's model stays in full precision
    run.fit()
    report = json.loads((tmp_path / "ost" / "offsite.json").read_text())
    assert report["emulator_tuned"]["loss"] < report["emulator_zero_shot"]["loss"]
    assert (tmp_path / "ost" / "plugged_in" / "config.json").is_file()
