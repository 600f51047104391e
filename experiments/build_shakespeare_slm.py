"""A second small model with its own tokenizer, made offline, for FedMKT's heterogeneous mode.

Only one pretrained model ships offline (SmolLM2-135M, byte-level BPE). This script makes another one that shares
nothing with it: a SentencePiece-style unigram tokenizer ("▁" for spaces, 8,000 entries) trained with `tokenizers`
on the Shakespeare plays the FedMKT clients do not hold, and a 4-block Llama (hidden 192, ~3.4M parameters)
pretrained from random weights on the same text with a plain Lightning Trainer for a bounded budget. The clients'
plays (hamlet, macbeth, romeo_and_juliet, tempest) are left out of both, so their data stays private to them.

    python experiments/build_shakespeare_slm.py [--output outputs/shakespeare-slm] [--steps 1000] [--json out.json]
    python experiments/build_shakespeare_slm.py --smoke --output DIR    (2 steps: the test suite)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from fedlit.cli import quiet_libraries
from fedlit.data.datamodule import CausalLMCollator
from fedlit.data.public import PublicDataConfig, public_blocks, public_texts
from fedlit.data.shakespeare import prepare_shakespeare
from fedlit.files import atomic_directory
from fedlit.lightning_modules import CausalLMModule, OptimizerConfig

CLIENT_PLAYS = ["hamlet", "macbeth", "romeo_and_juliet", "tempest"]


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(texts, trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("outputs/shakespeare-slm"))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="one play, 2 steps, a 300-token vocabulary (the test "
                        "suite)")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.vocab_size = 2, 300
    if args.output.exists():
        raise SystemExit(f"{args.output} exists: remove it or give another --output")
    quiet_libraries()
    L.seed_everything(0, verbose=False)
    excluded = CLIENT_PLAYS
    if args.smoke:  # one play's text only
        excluded = [path.stem for path in prepare_shakespeare().glob("*.txt") if path.stem != "julius_caesar"]
    data = PublicDataConfig(source="shakespeare", exclude={"play": excluded}, max_length=128, batch_size=16)
    began = time.perf_counter()
    tokenizer = train_tokenizer(public_texts(data), args.vocab_size)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    blocks = public_blocks(data, tokenizer)
    loader = DataLoader(blocks, batch_size=data.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0),
                        collate_fn=CausalLMCollator(tokenizer.pad_token_id))
    module = CausalLMModule(model, OptimizerConfig(lr=3e-3, scheduler="cosine", warmup_steps=50))
    trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    with atomic_directory(args.output) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    summary = {"output": str(args.output), "vocab_size": len(tokenizer), "parameters": model.num_parameters(),
               "blocks_of_128_tokens": len(blocks), "steps": args.steps,
               "final_train_loss": float(trainer.callback_metrics["train_loss_epoch"]),
               "seconds": round(time.perf_counter() - began, 1)}
    print(json.dumps(summary, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
