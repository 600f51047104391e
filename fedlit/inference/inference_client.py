"""The client's side of private inference (InferDPT): it perturbs its prompts before they leave, and its own local
model extracts the answer from the server's continuation and the clear prompt. The clear prompts, the answers and
the audit record (what was sent, what came back) stay with the client."""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import nn
from transformers import PreTrainedTokenizerBase

from fedlit.files import atomic_write_bytes
from fedlit.inference.messages import Continuations, Query
from fedlit.inference.perturbation import CandidateTable, candidate_table, check_epsilon
from fedlit.lightning_modules.generation import generate_texts
from fedlit.models import load_trained_model, trained_model_tokenizer
from fedlit.privacy.party_secret import PartySecret

log = logging.getLogger(__name__)


@dataclass
class ModelSpec:
    """A model to load where it is used (so a backend's worker loads it, not the caller).

    Args:
        model: a full model: a directory (e.g. FedOST's plugged_in), a hub name, or ``smollm2-135m-instruct``.
        adapter: or a peft adapter directory (e.g. a run's ``adapter``).
        base: the adapter's base model (default: the one its adapter_config.json names).
        dtype: the weights' dtype.
        device: where it runs: ``auto`` (a GPU when there is one), ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
    """

    model: str | None = None
    adapter: str | None = None
    base: str | None = None
    dtype: str = "float32"
    device: str = "auto"

    def load(self) -> tuple[nn.Module, PreTrainedTokenizerBase]:
        model = load_trained_model(self.adapter, self.model, self.base, self.dtype, self.device)
        return model, trained_model_tokenizer(model, self.model, self.base)


@dataclass
class InferenceConfig:
    """How a client asks.

    Args:
        private: perturb each prompt before it leaves (else it travels in the clear and the server's continuation
            is the answer).
        epsilon: the per-token privacy parameter (``inf`` or ``.inf``: no perturbation; a prompt of ``n`` perturbed
            tokens spends ``n * epsilon``).
        candidates: the size of each token's candidate set (its nearest tokens in embedding space).
        max_new_tokens: tokens the server generates per prompt.
        answer_max_new_tokens: tokens the local model generates for the answer.
        extraction_template: the local model's input, from the server's ``{continuation}``, the clear ``{prompt}``
            and, optionally, the prompt as ``{sent}``; the answer is the local model's greedy continuation of it.
            The default shows the local model the server's exchange (perturbed prompt and its continuation) as an
            example before the clear prompt, so even a small model can copy the answer's form and content.
        insecure_seed: derive the perturbation's randomness from this public number (and the client id) so that an
            experiment is reproducible; whoever knows it can replay every draw and undo the perturbation. ``None``
            (the default): a fresh secret from OS entropy for every run, never sent.
        table_dir: where the candidate table is cached (default: ``<fedlit cache>/candidates``).
    """

    private: bool = True
    epsilon: float | Literal["inf"] = 6.0
    candidates: int = 64
    max_new_tokens: int = 32
    answer_max_new_tokens: int = 32
    extraction_template: str = "{sent}{continuation}\n\n{prompt}"
    insecure_seed: int | None = None
    table_dir: str | None = None

    def __post_init__(self) -> None:
        self.epsilon = float(self.epsilon)  # ("inf", as a user types it, is infinity)
        check_epsilon(self.epsilon)
        for name in ("candidates", "max_new_tokens", "answer_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        missing = [field for field in ("{continuation}", "{prompt}") if field not in self.extraction_template]
        if missing:
            raise ValueError(f"extraction_template must contain {' and '.join(missing)}")


class InferenceClientApp:
    """One client's private inference: :meth:`query` answers the server's call with the prompts as they may leave,
    :meth:`extract` takes the continuations back, writes the answers and the audit record to ``output`` (JSON lines:
    prompt, sent, continuation, answer, epsilon) and returns only how many it wrote.

    Args:
        client_id: who asks.
        prompts: the clear prompts, or the path of a prompts file (:func:`read_prompts`), read here, where the
            client runs; they never leave this object.
        config: how to ask.
        output: the client's local answers file.
        local: the client's own model (the candidate table's embeddings, and the extraction); needed when private.
    """

    def __init__(self, client_id: str, prompts: list[str] | str, config: InferenceConfig, output: Path,
                 local: ModelSpec | None = None) -> None:
        if config.private and local is None:
            raise ValueError(f"client '{client_id}': private inference needs a local model (its embeddings pick "
                             "the candidates, and it extracts the answer)")
        prompts = read_prompts(prompts) if isinstance(prompts, str) else prompts
        self.client_id, self.prompts, self.config, self.output = client_id, prompts, config, Path(output)
        self.local = local.load() if config.private else None
        self.secret = PartySecret.fresh(f"client '{client_id}'", config.insecure_seed) if config.private else None
        self.sent: list[str] = []

    @functools.cached_property
    def table(self) -> CandidateTable:
        """The local model's candidate table (from the disk cache after the first build), once per app."""
        model, tokenizer = self.local
        directory = Path(self.config.table_dir) if self.config.table_dir else None
        return candidate_table(model, tokenizer, self.config.candidates, directory)

    def describe(self) -> dict[str, int | str]:
        """What a deployment's server learns of this client before it asks: its id and how many prompts it has."""
        return {"client_id": self.client_id, "train_size": len(self.prompts), "val_size": 0}

    def restore_state(self, state: bytes | None) -> None:
        """Take back the prompts as sent (:meth:`saved_state`), where a process answers one message and exits (a
        Flower party): the extraction and the audit record need them."""
        self.sent = json.loads(state) if state is not None else []

    def saved_state(self) -> bytes:
        """The prompts as sent (no secret: the server has them), kept by the party until its answers are out."""
        return json.dumps(self.sent).encode()

    def query(self, _: object = None) -> Query:
        """The prompts as they leave: perturbed (the mechanism's draw per usable token) when private."""
        if not self.config.private:
            self.sent = list(self.prompts)
        else:
            _, tokenizer = self.local
            table = self.table
            generator = self.secret.torch("perturbation")
            self.sent = [tokenizer.decode(table.perturb(tokenizer(p, add_special_tokens=False)["input_ids"],
                                                        self.config.epsilon, generator))
                         for p in self.prompts]
        return Query(self.sent, self.config.max_new_tokens)

    def extract(self, continuations: Continuations) -> dict[str, int]:
        """Answer each clear prompt from the server's continuation; write the answers file; return the count."""
        if len(continuations.texts) != len(self.prompts):
            raise ValueError(f"client '{self.client_id}': {len(continuations.texts)} continuations for "
                             f"{len(self.prompts)} prompts")
        answers = (self.extracted(continuations.texts) if self.config.private else list(continuations.texts))
        epsilon = self.config.epsilon if math.isfinite(self.config.epsilon) else "inf"  # (standard JSON has no inf)
        rows = [{"prompt": p, "sent": s, "continuation": c, "answer": a,
                 "epsilon": epsilon if self.config.private else None}
                for p, s, c, a in zip(self.prompts, self.sent, continuations.texts, answers, strict=True)]
        atomic_write_bytes(self.output, "".join(json.dumps(r) + "\n" for r in rows).encode())
        log.info("client '%s' wrote %d answers to %s", self.client_id, len(rows), self.output)
        return {"answers": len(rows)}

    def extracted(self, continuations: list[str]) -> list[str]:
        """The local model's greedy answer to each extraction input (the template over continuation and prompt)."""
        model, tokenizer = self.local
        texts = [self.config.extraction_template.format(sent=s, continuation=c, prompt=p)
                 for s, c, p in zip(self.sent, continuations, self.prompts, strict=True)]
        return generate_texts(model.eval(), tokenizer, texts, self.config.answer_max_new_tokens)


@dataclass
class InferenceApps:
    """Builds each client's :class:`InferenceClientApp`: plain data, so a backend can ship it to its workers (where
    each app loads its local model). Give each client's prompts as a file path to keep them out of this process:
    the app reads the file where it runs (on Ray: in a worker, not where the server's model is)."""

    prompts: dict[str, list[str] | str]
    outputs: dict[str, str]
    config: InferenceConfig
    local: ModelSpec | None = None

    def __call__(self, client_id: str) -> InferenceClientApp:
        return InferenceClientApp(client_id, self.prompts[client_id], self.config, Path(self.outputs[client_id]),
                                  self.local)


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a JSON list or a JSON-lines file; each item a string or an object with a ``prompt`` string.
    A malformed file is refused naming the file and the line or item."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise OSError(f"prompts file {path}: {error.strerror or error}") from None
    if path.suffix == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"prompts file {path}: not valid JSON ({error})") from None
        if not isinstance(items, list):
            raise ValueError(f"prompts file {path}: expected a JSON list of prompts")
        where = [f"item {i}" for i in range(len(items))]
    else:
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        items, where = [], [f"line {n}" for n, _ in lines]
        for n, line in lines:
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"prompts file {path} line {n}: not valid JSON ({error.msg})") from None
    prompts = []
    for item, at in zip(items, where, strict=True):
        prompt = item.get("prompt") if isinstance(item, dict) else item
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompts file {path} {at}: expected a non-empty string or an object with a 'prompt' "
                             "string")
        prompts.append(prompt)
    if not prompts:
        raise ValueError(f"prompts file {path}: no prompts")
    return prompts
