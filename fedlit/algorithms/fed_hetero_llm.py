"""FedHeteroLLM (FATE-LLM): clients own LLMs of different sizes; each distils one common small *mentee*
from its own LLM while tuning the mentee's PEFT adapter, and only that adapter is federated."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from peft import LoraConfig, PeftConfig, PeftModel
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from fedlit.algorithms.fed_homo_llm import DEFAULT_LORA
from fedlit.algorithms.federated_loop import federated_loop
from fedlit.data.federated import DataConfig
from fedlit.federation import Federation
from fedlit.lightning_modules import (
    DistillationLossConfig,
    EvaluationConfig,
    KnowledgeDistillationModule,
    OptimizerConfig,
    PeftModule,
    build_peft_model,
)
from fedlit.lightning_modules.knowledge_distillation import check_same_tokenizer, check_shared_vocabulary
from fedlit.models import ModelConfig, QuantizationConfig, load_base_model, load_tokenizer
from fedlit.models.loading import resolve_model_path
from fedlit.server.loop import FederatedLoop


@functools.lru_cache(maxsize=4)
def cached_teacher(name_or_path: str, dtype: str, keep_blocks: int | None,
                   quantization: QuantizationConfig | None = None) -> PreTrainedModel:
    """A teacher loaded in the process that trains its client (a Ray worker, say) when first needed; the four
    most recently used stay loaded, and clients naming the same teacher share one copy."""
    return load_base_model(ModelConfig(name_or_path, dtype, keep_blocks, quantization))


@dataclass
class DistillingClient:
    """A client's module factory: the shared mentee, distilled from the client's own teacher. It holds the
    teacher's config, not its weights, so shipping it to a worker is cheap."""

    student: PeftModel
    teacher: ModelConfig
    loss: DistillationLossConfig
    optimizer: OptimizerConfig
    evaluation: EvaluationConfig
    tokenizer: PreTrainedTokenizerBase

    def __call__(self) -> KnowledgeDistillationModule:
        teacher = cached_teacher(self.teacher.name_or_path, self.teacher.dtype, self.teacher.keep_blocks,
                                 self.teacher.quantization)
        return KnowledgeDistillationModule(self.student, teacher, self.loss, self.optimizer, self.evaluation,
                                           self.tokenizer)


def fed_hetero_llm(
    teachers: dict[str, ModelConfig],
    mentee: ModelConfig = ModelConfig(keep_blocks=8),  # noqa: B008 - frozen-by-convention config defaults
    data: DataConfig = DataConfig(),  # noqa: B008
    peft: PeftConfig | None = None,
    loss: DistillationLossConfig = DistillationLossConfig(),  # noqa: B008
    optimizer: OptimizerConfig = OptimizerConfig(),  # noqa: B008
    evaluation: EvaluationConfig = EvaluationConfig(),  # noqa: B008
    federation: Federation | None = None,
) -> FederatedLoop:
    """Compose a FedHeteroLLM run.

    Args:
        teachers: client id -> that client's own LLM (any size; it must share the mentee's vocabulary; its
            ``quantization`` loads it in 4 or 8 bits). In a deployment each party names its own in its party
            config, and the server's is ignored.
        mentee: the common small model every client trains an adapter of (default: the default model cut to
            8 blocks by layer drop; with ``quantization``, QLoRA on the layer-dropped model).
        loss: the CE/KL mix and temperature of the distillation.

    ``data``, ``peft``, ``optimizer``, ``evaluation`` and ``federation`` are as for
    :func:`fedlit.algorithms.fed_homo_llm`; evaluation scores the global mentee adapter.
    """
    federation = federation or Federation()
    tokenizer = load_tokenizer(mentee)
    federated = federation.backend.federated_data(data, tokenizer)
    if federated.held_by_parties:  # a deployment: each party names and loads its own teacher
        teachers = {}
    else:
        clients = set(federated.clients)
        missing, unknown = sorted(clients - set(teachers)), sorted(set(teachers) - clients)
        if missing or unknown:
            raise ValueError(f"teachers: no model for clients {missing}, models for unknown clients {unknown} "
                             f"(clients: {sorted(federated.clients)})")
    student = build_peft_model(load_base_model(mentee), peft or LoraConfig(**DEFAULT_LORA),
                               seed=federation.seed)
    factories = {}
    checked = set()  # clients naming the same teacher: its files are read once
    for client_id, teacher_config in teachers.items():
        try:  # checked here from tokenizer and config; the weights load where the client trains
            if repr(teacher_config) not in checked:
                check_same_tokenizer(tokenizer, load_tokenizer(teacher_config))
                vocabulary = AutoConfig.from_pretrained(resolve_model_path(teacher_config.name_or_path)).vocab_size
                check_shared_vocabulary(student, vocabulary)
                checked.add(repr(teacher_config))
        except ValueError as error:
            raise ValueError(f"teacher of client '{client_id}' ({teacher_config.name_or_path}): {error}") from None
        factories[client_id] = DistillingClient(student, teacher_config, loss, optimizer, evaluation, tokenizer)
    return federated_loop(
        federated, functools.partial(PeftModule, student, optimizer, evaluation, tokenizer),
        federation, fingerprint={"teachers": teachers, "mentee": mentee, "data": data, "peft": peft},
        client_factories=factories,
    )
