"""FedMKT (Fan et al., COLING 2025; FATE-LLM 2.x): a server LLM and client small LMs (SLMs), of different
architectures and tokenizers, teach each other through their top-k logits on shared public texts. Each round a
client tunes its SLM's LoRA on its private data while distilling from the LLM's knowledge, then sends its own
knowledge; the server carries every client's knowledge into its tokenisation and vocabulary, distils its LLM's LoRA
from the best teacher per text (dual minimum cross-entropy) and broadcasts its new knowledge."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from peft import LoraConfig, PeftConfig
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from fedlit.algorithms.fed_homo_llm import DEFAULT_LORA
from fedlit.algorithms.federated_loop import federated_loop
from fedlit.algorithms.server_llm import ServerLLM
from fedlit.data.datamodule import CausalLMDataModule
from fedlit.data.federated import GLOBAL, DataConfig, FederatedData
from fedlit.data.public import public_texts
from fedlit.federation import Federation
from fedlit.files import atomic_directory
from fedlit.lightning_modules import DistillationLossConfig, EvaluationConfig, OptimizerConfig, PeftModule
from fedlit.lightning_modules.knowledge_transfer import (
    KnowledgeRecord,
    KnowledgeTransferConfig,
    KnowledgeTransferModule,
    PublicDistillation,
    checked_knowledge,
)
from fedlit.lightning_modules.peft_module import build_peft_model
from fedlit.lightning_modules.public_knowledge import (
    PREFIX,
    Knowledge,
    KnowledgeBridge,
    PublicTeacher,
    PublicTexts,
    chosen,
    dual_min_selection,
)
from fedlit.models import ModelConfig, load_base_model, load_tokenizer, tokenizer_at
from fedlit.payload import Payload, canonical, split
from fedlit.server.loop import FederatedLoop
from fedlit.strategies import KnowledgeGathering, Strategy
from fedlit.strategies.knowledge import per_client
from fedlit.validation import server_trainer

Mode = Literal["heterogeneous", "homogeneous", "llm_to_slm"]


class MutualTransferServer(ServerLLM):
    """FedMKT's server side, around :class:`~fedlit.strategies.KnowledgeGathering`: the LLM's knowledge goes out in
    round 1 (:meth:`initial`); after each round it distils from the clients' knowledge (``transfer.server_steps``;
    none in ``llm_to_slm`` mode: ``learns`` false) and sends its new knowledge, with the FedAvg'd SLM adapter when
    there is one."""

    def __init__(self, inner: Strategy, llm: Callable[[], PeftModule], public: PublicTexts,
                 bridges: Mapping[str, KnowledgeBridge], config: KnowledgeTransferConfig,
                 loss: DistillationLossConfig, learns: bool, held_out: Mapping[str, CausalLMDataModule],
                 trainer_kwargs: dict[str, Any]) -> None:
        super().__init__(KnowledgeGathering(inner, PREFIX), llm, held_out, trainer_kwargs)
        self.public, self.bridges, self.config, self.loss, self.learns = public, dict(bridges), config, loss, learns
        self.knowledge: Knowledge | None = None

    def _own_knowledge(self) -> Knowledge:
        self.knowledge = checked_knowledge(self.llm, self.public, self.config, "the server LLM's public knowledge")
        return self.knowledge

    def initial(self, payload: Payload) -> Payload:
        _, rest = split(self.inner.initial(payload), PREFIX)
        return canonical({**self._own_knowledge().payload(), **rest})

    def after_round(self, payload: Payload, server_round: int, seed: int) -> tuple[Payload, list[dict[str, Any]]]:
        payload, rows = self.inner.after_round(payload, server_round, seed)
        clients, rest = per_client(payload)  # each client's knowledge; the rest: the averaged adapter, if any
        if self.learns and clients:
            carried = [self.bridges[c].carry(Knowledge.from_payload(clients[c])) for c in sorted(clients)]
            best, taught = dual_min_selection(self.knowledge.ce, torch.stack([k.ce for k in carried]))
            loss = self._distil(PublicTeacher(self.public, chosen(carried, best), taught), seed)
            rows.append({"client": "server", "split": "train", "model": "llm", "loss": loss,
                         "num_examples": int(taught.sum())})
            self._own_knowledge()
        return canonical({**self.knowledge.payload(), **rest}), rows

    def _distil(self, teacher: PublicTeacher, seed: int) -> float:
        """``transfer.server_steps`` of :class:`PublicDistillation` on shuffled public texts; the mean loss."""
        texts = DataLoader(range(len(self.public)), batch_size=self.config.batch_size, shuffle=True,
                           generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)
        trainer = server_trainer(self.trainer_kwargs, max_steps=self.config.server_steps)
        trainer.fit(PublicDistillation(self.llm, teacher, self.loss, self.config.server_lr), texts)
        return float(trainer.callback_metrics["llm_loss_epoch"])

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "knowledge": self.knowledge.payload()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.knowledge = Knowledge.from_payload(state["knowledge"])


def refuse_unsupported(federation: Federation) -> None:
    """Knowledge is not an adapter update: the features that work on update vectors do not apply."""
    for key in ("secure_aggregation", "privacy", "example_privacy", "compression", "watermark"):
        if getattr(federation, key) is not None:
            raise ValueError(f"fedmkt: {key} works on adapter updates, not on the top-k logits FedMKT exchanges; "
                             "leave it unset")
    if federation.faults.max_update_norm is not None:
        raise ValueError("fedmkt: faults.max_update_norm bounds adapter updates; logits are checked for NaN/Inf "
                         "instead: leave it unset")


def check_mode(mode: str, fedavg: bool, slms: Mapping[str, ModelConfig], slm: ModelConfig) -> None:
    if mode not in ("heterogeneous", "homogeneous", "llm_to_slm"):
        raise ValueError(f"mode must be heterogeneous, homogeneous or llm_to_slm, got {mode!r}")
    if fedavg and mode != "homogeneous":
        raise ValueError(f"fedavg averages the clients' SLM adapters: only in mode homogeneous, not {mode}")
    if mode == "homogeneous" and any(config != slm for config in slms.values()):
        raise ValueError("mode homogeneous: every client trains the same slm; slms names other models for "
                         f"{sorted(c for c, config in slms.items() if config != slm)}")


def fitting_texts(config: KnowledgeTransferConfig, tokenizers: list[PreTrainedTokenizerBase]
                  ) -> tuple[list[str], list[int]]:
    """``config.examples`` public texts spread evenly over those of 2..``max_length`` tokens for every tokenizer (the
    records come play by play: the first ones would all be one play's), and where each one's response starts."""
    prompts = public_texts(config, "transfer.template")
    responses = (public_texts(dataclasses.replace(config, template=config.response_template),
                              "transfer.response_template") if config.response_template else [""] * len(prompts))
    pairs = list(zip(prompts, responses, strict=True))
    for tokenizer in tokenizers:
        if pairs:
            counts = [len(ids) for ids in tokenizer([p + r for p, r in pairs], add_special_tokens=False)["input_ids"]]
            pairs = [pair for pair, n in zip(pairs, counts, strict=True) if 2 <= n <= config.max_length]
    if not pairs:
        raise ValueError(f"transfer: no public text of '{config.source}' fits max_length {config.max_length} tokens "
                         "for every tokenizer")
    chosen = np.unique(np.linspace(0, len(pairs) - 1, min(config.examples, len(pairs))).round().astype(int))
    starts = [len(pairs[i][0]) if config.response_template else 0 for i in chosen]  # no response: the whole text
    return [pairs[i][0] + pairs[i][1] for i in chosen], starts


@dataclasses.dataclass
class SmallModel:
    """One SLM as the clients that train it get it: their module factory, and the adapter they start from."""

    module: Callable[[], KnowledgeTransferModule]
    initial: Payload


PUBLIC_TEXTS = "public_texts.json"


def write_transfer_package(directory: Path, llm_tokenizer: PreTrainedTokenizerBase, texts: list[str],
                           response_starts: list[int]) -> None:
    """What every client needs of the server: the LLM's tokenizer (to carry the LLM's knowledge into its own
    tokens) and the public texts, chosen to fit every client's tokenizer (which a party cannot choose alone: it
    knows only its own)."""
    with atomic_directory(directory) as tmp:
        llm_tokenizer.save_pretrained(tmp)
        Path(tmp, PUBLIC_TEXTS).write_text(json.dumps({"texts": texts, "response_starts": response_starts}))


def read_transfer_package(directory: Path) -> tuple[PreTrainedTokenizerBase, list[str], list[int]]:
    """The LLM's tokenizer, the public texts and where each one's response starts, from the package."""
    public = json.loads(Path(directory, PUBLIC_TEXTS).read_text())
    return tokenizer_at(directory), list(public["texts"]), list(public["response_starts"])


def client_data(data: DataConfig, federation: Federation, llm_tokenizer: PreTrainedTokenizerBase,
                slm_of: Callable[[str], ModelConfig], tokenizer_of: Callable[[ModelConfig], PreTrainedTokenizerBase]
                ) -> tuple[FederatedData, CausalLMDataModule | None]:
    """Each client's data in its own SLM's tokenisation, and the server's held-out split in the LLM's (none in a
    deployment: the server holds no data). Only the SLMs of the clients at hand are read: a party knows its own."""
    backend = federation.backend
    in_llm_tokens = backend.federated_data(data, llm_tokenizer)
    configs = {repr(slm_of(cid)): slm_of(cid) for cid in in_llm_tokens.clients}
    built = {name: backend.federated_data(data, tokenizer_of(config)) for name, config in configs.items()}
    clients = {cid: built[repr(slm_of(cid))].clients[cid] for cid in in_llm_tokens.clients}
    return dataclasses.replace(in_llm_tokens, clients=clients, global_val=None), in_llm_tokens.global_val


def fed_mkt(
    llm: ModelConfig = ModelConfig(),  # noqa: B008 - frozen-by-convention config defaults
    slm: ModelConfig = ModelConfig(keep_blocks=8),  # noqa: B008
    slms: dict[str, ModelConfig] | None = None,
    mode: Mode = "heterogeneous",
    fedavg: bool = False,
    transfer: KnowledgeTransferConfig = KnowledgeTransferConfig(),  # noqa: B008
    loss: DistillationLossConfig = DistillationLossConfig(),  # noqa: B008
    data: DataConfig = DataConfig(),  # noqa: B008
    peft: PeftConfig | None = None,
    llm_peft: PeftConfig | None = None,
    optimizer: OptimizerConfig = OptimizerConfig(),  # noqa: B008
    evaluation: EvaluationConfig = EvaluationConfig(),  # noqa: B008
    federation: Federation | None = None,
) -> FederatedLoop:
    """Compose a FedMKT run.

    Args:
        llm: the server's large model (default: the offline SmolLM2-135M-Instruct).
        slm: the clients' small model (default: the LLM cut to 8 blocks); ``slms`` gives named clients another one
            (any architecture and tokenizer: knowledge is carried across tokenizers).
        mode: ``heterogeneous`` (each client its own SLM; LLM and SLMs teach each other), ``homogeneous`` (every
            client the same ``slm``; with ``fedavg`` its adapter is also averaged each round), ``llm_to_slm`` (the
            LLM only teaches).
        transfer: the public texts, top-k, the server's distillation steps and learning rate.
        loss: the CE/KD mix and temperature on both sides.
        peft: the SLMs' adapter (default LoRA r=8 on q_proj and v_proj); ``llm_peft``: the LLM's (default: as peft).

    ``data``, ``optimizer``, ``evaluation`` and ``federation`` are as for :func:`fedlit.algorithms.fed_homo_llm`.
    Evaluation scores each client's own SLM on its held-out split and the LLM (rows ``model: llm``) on the
    server's. Secure aggregation, DP and compression work on adapter updates and are refused. Outputs:
    ``client_package/`` (the LLM's tokenizer and the public texts: all a client gets of the server, sent to the
    parties of a deployment by digest), ``llm_adapter/``, ``adapter/knowledge.safetensors`` (the LLM's last
    knowledge), each client's own adapter under ``client_state/personal`` (unless ``fedavg``: then ``adapter/``
    also holds the averaged one).
    """
    federation = federation or Federation()
    slms = dict(slms or {})
    check_mode(mode, fedavg, slms, slm)
    refuse_unsupported(federation)
    seed, peft = federation.seed, peft or LoraConfig(**DEFAULT_LORA)

    def build(directory: Path) -> None:
        tokenizers = [load_tokenizer(config) for config in [llm, slm, *slms.values()]]
        write_transfer_package(directory, tokenizers[0], *fitting_texts(transfer, tokenizers))

    package = federation.backend.client_package(Path(federation.output_dir) / "client_package", build)
    llm_tokenizer, texts, response_starts = read_transfer_package(package)
    loaded: dict[str, PreTrainedTokenizerBase] = {}

    def tokenizer_of(config: ModelConfig) -> PreTrainedTokenizerBase:
        """An SLM's tokenizer, loaded once."""
        if repr(config) not in loaded:
            loaded[repr(config)] = load_tokenizer(config)
        return loaded[repr(config)]

    federated, held_out = client_data(data, federation, llm_tokenizer, lambda cid: slms.get(cid, slm), tokenizer_of)
    unknown = sorted(set(slms) - set(federated.clients))
    if unknown and federation.backend.sees_every_client:
        raise ValueError(f"slms: no client {unknown} (clients: {sorted(federated.clients)})")
    llm_public = PublicTexts.encode(texts, llm_tokenizer, transfer.max_length, response_starts)
    llm_base = functools.cache(functools.partial(load_base_model, llm))  # the server's: never a party's
    slm_of = {cid: slms.get(cid, slm) for cid in federated.clients}
    learns = mode != "llm_to_slm" and transfer.server_steps > 0  # (the server distils from the clients' knowledge)
    small, bridges = {}, {}
    for config in [*slm_of.values(), *([slm] if fedavg else [])]:  # the SLMs of the clients at hand
        name = repr(config)
        if name in small:
            continue
        tokenizer = tokenizer_of(config)
        public = PublicTexts.encode(texts, tokenizer, transfer.max_length, response_starts)
        model = build_peft_model(load_base_model(config), copy.deepcopy(peft), seed=seed)
        initial = canonical({n: p for n, p in model.named_parameters() if p.requires_grad})
        to_slm = KnowledgeBridge(llm_public, public, llm_tokenizer, tokenizer)
        bridges[name] = KnowledgeBridge(public, llm_public, tokenizer, llm_tokenizer)
        small[name] = SmallModel(functools.partial(KnowledgeTransferModule, model, public, to_slm, transfer, loss,
                                                   fedavg, initial, optimizer, evaluation, tokenizer,
                                                   sends_knowledge=learns), initial)

    def llm_module() -> PeftModule:
        return PeftModule(build_peft_model(llm_base(), copy.deepcopy(llm_peft or peft), seed=seed), optimizer,
                          evaluation, llm_tokenizer)

    start = Knowledge.empty(len(texts), transfer.max_length, transfer.top_k).payload()
    if fedavg:
        start.update(small[repr(slm)].initial)
    transfer_server = MutualTransferServer(
        federation.strategy, llm_module, llm_public, {cid: bridges[repr(c)] for cid, c in slm_of.items()},
        transfer, loss, learns=learns, held_out={GLOBAL: held_out} if held_out is not None else {},
        trainer_kwargs=federation.trainer)
    return federated_loop(
        federated, functools.partial(KnowledgeRecord, canonical(start)), federation.replace(strategy=transfer_server),
        fingerprint={"llm": llm, "slm": slm, "slms": slms, "mode": mode, "fedavg": fedavg, "transfer": transfer,
                     "loss": loss, "data": data, "peft": peft, "llm_peft": llm_peft},
        client_factories={cid: small[repr(c)].module for cid, c in slm_of.items()}, personal=True,
    )
