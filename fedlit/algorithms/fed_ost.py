"""FedOST (FATE-LLM): federated offsite-tuning. The owner keeps its LLM; clients tune adapter blocks against
a lossy emulator of the middle; the aggregated adapters are plugged back into the full model."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from peft import LoraConfig, PeftConfig
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from fedlit.algorithms.federated_loop import federated_loop
from fedlit.client import ModuleFactory
from fedlit.data.datamodule import CausalLMDataModule
from fedlit.data.federated import GLOBAL, DataConfig
from fedlit.data.public import public_blocks, public_dataloader
from fedlit.federation import Federation
from fedlit.files import atomic_directory, atomic_write_bytes
from fedlit.lightning_modules import CausalLMModule, EvaluationConfig, OptimizerConfig, PeftModule, build_peft_model
from fedlit.lightning_modules.emulator_distillation import EmulatorDistillation
from fedlit.lightning_modules.knowledge_distillation import DistillationConfig
from fedlit.models import ModelConfig, load_base_model, load_tokenizer
from fedlit.models.offsite import (
    OffsiteConfig,
    adapter_indices,
    adapter_state,
    build_emulator,
    decoder_blocks,
    plug_in,
)
from fedlit.payload import Payload, to_bytes
from fedlit.privacy.party_secret import PartySecret
from fedlit.server.emulator_construction import EmulatorConstruction, read_manifest, write_client_package
from fedlit.server.loop import FederatedLoop
from fedlit.strategies import Strategy
from fedlit.strategies.wrapper import StrategyWrapper
from fedlit.validation import server_trainer, validate
from fedlit.watermark import WatermarkConfig, imprint, load_or_make_key


def client_package(full: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, offsite: OffsiteConfig,
                   distillation: DistillationConfig, directory: Path, seed: int,
                   trainer_kwargs: dict[str, Any] | None = None) -> None:
    """Build the emulator, distil it on public data if asked (a server-side Trainer, on the accelerator of the
    clients' ``trainer_kwargs``, whose :class:`EmulatorConstruction` callback writes the package), else write it as
    built; the package's manifest names the full model's blocks it keeps (``plan``)."""
    emulator, plan = build_emulator(full, offsite)
    if distillation.steps <= 0:
        write_client_package(emulator, tokenizer, directory, {"plan": plan})
        return
    L.seed_everything(seed, verbose=False)
    trainer = server_trainer(trainer_kwargs or {}, max_steps=distillation.steps, limit_val_batches=0,
                             callbacks=[EmulatorConstruction(directory, tokenizer, {"plan": plan})])
    with warnings.catch_warnings():  # the frozen full model (the teacher) stays in eval mode on purpose
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode")
        blocks = public_blocks(distillation, tokenizer)
        trainer.fit(EmulatorDistillation(full, emulator, plan, offsite, distillation.lr),
                    public_dataloader(blocks, distillation, tokenizer.pad_token_id, seed))


def trainable_adapters(emulator: PreTrainedModel, plan: list[int], offsite: OffsiteConfig,
                       peft: PeftConfig | None, seed: int) -> PreTrainedModel:
    """Unfreeze the adapter blocks (``peft=None``) or wrap them alone with a peft adapter (LoRA, ...)."""
    prefix, blocks = decoder_blocks(emulator)
    indices = adapter_indices(plan, offsite)
    emulator.requires_grad_(False)
    if peft is None:
        for i in indices:
            blocks[i].requires_grad_(True)
        return emulator
    if not isinstance(peft, LoraConfig):
        raise ValueError(f"offsite adapters take LoRA or full tuning (peft: null), not {type(peft).__name__}")
    peft = dataclasses.replace(peft, layers_to_transform=indices, layers_pattern=prefix.rsplit(".", 1)[-1])
    return build_peft_model(emulator, peft, seed=seed)


def client_emulator(package: Path, model: ModelConfig, plan: list[int], offsite: OffsiteConfig) -> PreTrainedModel:
    """The emulator a client trains against, loaded from the package; under ``model.quantization`` its emulated
    (frozen) blocks are quantized and its adapter blocks, which train and go back into the full model, are not."""
    skeleton_config = AutoConfig.from_pretrained(package)
    with torch.device("meta"):
        prefix, _ = decoder_blocks(AutoModelForCausalLM.from_config(skeleton_config))
    adapters = [f"{prefix}.{i}" for i in adapter_indices(plan, offsite)]
    return load_base_model(dataclasses.replace(model, name_or_path=str(package), keep_blocks=None),
                           skip_modules=adapters)


def imprint_owner_watermark(load: Callable[[], PreTrainedModel], offsite: OffsiteConfig, config: WatermarkConfig,
                            key_path: Path, insecure_seed: int | None = None) -> PreTrainedModel:
    """The full model that ``load`` returns with the owner's ownership watermark on its adapter blocks, before any
    client gets them: its key's sign pattern among those blocks' weights (``config.signature.parameters`` filters
    them), each marked weight given its sign and a magnitude drawn like its neighbours' (:func:`~fedlit.watermark.
    imprint`, from the owner's own secret kept beside the key, so a resumed run imprints the same). The owner does not
    train, so no trigger; the key file stays with the owner."""
    if config.trigger is not None or config.signature is None:
        raise ValueError("owner_watermark: the owner imprints a signature only (set trigger: null and a signature)")
    full = load()
    prefix, blocks = decoder_blocks(full)
    ends = adapter_indices(list(range(len(blocks))), offsite)  # the full model's own block numbering
    adapters = {n: p for n, p in full.named_parameters() if any(n.startswith(f"{prefix}.{i}.") for i in ends)}
    key = load_or_make_key(key_path, "owner", full, adapters, config)
    secret = PartySecret.load_or_create(key_path.with_suffix(".secret"), "the model owner", insecure_seed)
    imprint(adapters, key.signature, secret.torch("watermark-imprint"), key.gamma)
    return full


class OffsitePlugIn(StrategyWrapper):
    """FedOST's server side, as a strategy wrapper: at the end of the run it plugs the aggregated adapters into the
    owner's full model, evaluates the full model zero-shot and plugged in on the server's held-out split (none in a
    deployment: the server holds no data), exports the plugged-in model with ``save_pretrained`` to
    ``output_dir/plugged_in`` and writes every number to ``output_dir/offsite.json``."""

    def __init__(self, inner: Strategy, full_model: Callable[[], PreTrainedModel], emulator: ModuleFactory,
                 tokenizer: PreTrainedTokenizerBase, plan: list[int], offsite: OffsiteConfig, peft: PeftConfig | None,
                 evaluation: EvaluationConfig, global_val: CausalLMDataModule | None,
                 trainer_kwargs: dict[str, Any]) -> None:
        super().__init__(inner)
        self.full_model, self.emulator, self.tokenizer = full_model, emulator, tokenizer
        self.plan, self.offsite, self.peft = plan, offsite, peft
        self.evaluation, self.global_val, self.trainer_kwargs = evaluation, global_val, trainer_kwargs

    def _validate_full(self) -> dict[str, float] | None:
        if self.global_val is None:
            return None
        module = CausalLMModule(self.full_model(), evaluation=self.evaluation, tokenizer=self.tokenizer)
        return validate(module, {GLOBAL: self.global_val}, self.trainer_kwargs)[GLOBAL]

    def plugged_in(self, payload: Payload) -> PreTrainedModel:
        """The full model with its adapter blocks replaced by the tuned ones (LoRA merged into a copy)."""
        module = self.emulator()
        module.load_trainable_state_dict(payload, who="the global adapter")
        tuned = copy.deepcopy(module.model).merge_and_unload() if self.peft is not None else module.model
        full = self.full_model()
        plug_in(full, adapter_state(tuned, self.plan, self.offsite), self.plan)
        return full

    def save(self, output_dir: Path, payload: Payload, history: list[dict[str, Any]]) -> None:
        self.inner.save(output_dir, payload, history)
        full_zero_shot = self._validate_full()
        full_parameters = sum(p.numel() for p in self.full_model().parameters())
        plugged = self.plugged_in(payload)
        with atomic_directory(output_dir / "plugged_in") as tmp:
            plugged.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
        global_rows = [r for r in history if r["client"] == GLOBAL and r["split"] == "val"]
        report = {
            "plan": self.plan,
            "parameters": {
                "full_model": full_parameters,
                "emulator": sum(p.numel() for p in self.emulator().model.parameters()),
                "adapter": sum(t.numel() for t in payload.values()),
            },
            "bytes_per_client_per_round": len(to_bytes(payload)),
            "full_zero_shot": full_zero_shot,
            "emulator_zero_shot": global_rows[0] if global_rows else None,
            "emulator_tuned": global_rows[-1] if global_rows else None,
            "plug_in": self._validate_full(),
        }
        atomic_write_bytes(output_dir / "offsite.json", json.dumps(report, indent=2, default=float).encode())


def fed_ost(
    model: ModelConfig = ModelConfig(),  # noqa: B008 - frozen-by-convention config defaults
    data: DataConfig = DataConfig(),  # noqa: B008
    offsite: OffsiteConfig = OffsiteConfig(),  # noqa: B008
    distillation: DistillationConfig = DistillationConfig(),  # noqa: B008
    peft: PeftConfig | None = None,
    optimizer: OptimizerConfig = OptimizerConfig(),  # noqa: B008
    evaluation: EvaluationConfig = EvaluationConfig(),  # noqa: B008
    owner_watermark: WatermarkConfig | None = None,
    federation: Federation | None = None,
) -> FederatedLoop:
    """Compose a FedOST run: a FederatedLoop over the emulator whose strategy ends with :class:`OffsitePlugIn`.

    Args:
        model: the owner's full model (default: the offline SmolLM2-135M-Instruct, 30 blocks); its
            ``quantization`` applies to the emulator's frozen blocks where clients train (the full model and the
            adapter blocks stay in ``model.dtype``).
        data: records, client split and held-out splits.
        offsite: adapter blocks (front/back) and the emulator's share of the middle blocks.
        distillation: optional server-side distillation of the emulator on public data (``steps > 0``).
        peft: ``None`` tunes the adapter blocks fully (as in the paper); a ``LoraConfig`` puts LoRA on them.
        owner_watermark: the owner's signature, imprinted on the adapter blocks before they are packaged (its key
            in ``key_dir/owner.json``, a relative ``key_dir`` under ``output_dir``); verify the plugged-in model with
            ``fedlit verify --model output_dir/plugged_in``.

    ``optimizer``, ``evaluation`` and ``federation`` are as for :func:`fedlit.algorithms.fed_homo_llm`;
    ``federation.output_dir`` also gets ``client_package/`` (all a client receives), ``plugged_in/`` and
    ``offsite.json``.
    """
    federation = federation or Federation()
    seed = federation.seed
    # the owner's (never a client's), in full precision: the emulator is cut from it and the adapters go back in
    full_model = functools.cache(functools.partial(load_base_model, dataclasses.replace(model, quantization=None)))
    if owner_watermark is not None:
        key_path = Path(federation.output_dir) / owner_watermark.key_dir / "owner.json"  # absolute key_dir: as is
        full_model = functools.cache(functools.partial(imprint_owner_watermark, full_model, offsite, owner_watermark,
                                                       key_path, federation.insecure_seed))
    package = federation.backend.client_package(
        Path(federation.output_dir) / "client_package",
        lambda directory: client_package(full_model(), load_tokenizer(model), offsite, distillation, directory, seed,
                                         federation.trainer))
    tokenizer = load_tokenizer(ModelConfig(str(package)))  # the package holds everything a client gets
    plan = read_manifest(package)["plan"]
    federated = federation.backend.federated_data(data, tokenizer)
    emulator = client_emulator(package, model, plan, offsite)  # the clients' only model
    client_model = trainable_adapters(emulator, plan, offsite, peft, seed)
    emulator_module = functools.partial(PeftModule if peft is not None else CausalLMModule, client_model, optimizer,
                                        evaluation, tokenizer)
    plug_in_step = OffsitePlugIn(federation.strategy, full_model, emulator_module, tokenizer, plan, offsite, peft,
                                 evaluation, federated.global_val, federation.trainer)
    return federated_loop(
        federated, emulator_module, federation.replace(strategy=plug_in_step),
        fingerprint={"model": model, "data": data, "offsite": offsite, "distillation": distillation, "peft": peft},
    )
