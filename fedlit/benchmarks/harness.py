"""A trained model (a base with a federated adapter, FedOST's plugged-in model, any causal LM) scored on
lm-evaluation-harness tasks through its Hugging Face wrapper, as leaderboards score: harness task names (offline,
their datasets must be in the cache) or local task YAML files, whose datasets may be local files."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

HARNESS_MISSING = "benchmark evaluation needs lm-evaluation-harness: pip install 'fedlit[harness]' (or lm-eval)"


@dataclass
class HarnessConfig:
    """What the harness evaluates.

    Args:
        tasks: harness task or group names (``mmlu``, ``gsm8k``, ...) and/or local task YAML files (their ``task:``
            names are evaluated; other YAML files in the same folder may be included by them).
        num_fewshot: few-shot examples in each prompt (``None``: each task's own setting).
        batch_size: requests per forward pass.
        limit: only the first N documents of each task (a fraction if < 1): for a quick look, not for reporting.
        apply_chat_template: wrap each prompt in the tokenizer's chat template (instruction-tuned models).
        gen_kwargs: generation settings for generate-until tasks (e.g. ``{max_gen_toks: 256}``), over the task's.
        confirm_run_unsafe_code: let tasks that execute the model's output run (HumanEval, MBPP): an explicit opt-in.
        every: in a run (the ``harness:`` key of ``fedlit fit``), also every this many rounds; ``None``: after the
            last round only.
    """

    tasks: list[str] = field(default_factory=list)
    num_fewshot: int | None = None
    batch_size: int = 8
    limit: float | None = None
    apply_chat_template: bool = False
    gen_kwargs: dict[str, Any] | None = None
    confirm_run_unsafe_code: bool = False
    every: int | None = None

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("harness.tasks is empty: name harness tasks (e.g. mmlu) or local task YAML files")
        if self.batch_size < 1:
            raise ValueError(f"harness.batch_size must be >= 1, got {self.batch_size}")
        if self.every is not None and self.every < 1:
            raise ValueError(f"harness.every must be >= 1, got {self.every}")

    def due(self, server_round: int, rounds: int) -> bool:
        """Whether a run evaluates on the harness after ``server_round`` of ``rounds``."""
        return server_round > 0 and (server_round == rounds or bool(self.every) and server_round % self.every == 0)


def task_names(tasks: list[str]) -> tuple[list[str], list[str]]:
    """Harness task names, and the folders of the local YAML files among ``tasks`` (to include): a file path is
    replaced by its ``task:`` name; a path that does not exist is an error naming it."""
    names, folders = [], []
    for task in tasks:
        if not task.endswith((".yaml", ".yml")):
            names.append(task)
            continue
        path = Path(task).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"harness task file {task}: no such file")
        found = re.search(r"^task:\s*['\"]?([^'\"\s#]+)", path.read_text(), re.MULTILINE)
        if found is None:
            raise ValueError(f"harness task file {task}: no top-level 'task:' name")
        names.append(found.group(1))
        folders.append(str(path.resolve().parent))
    return names, sorted(set(folders))


@dataclass(frozen=True)
class CheckedTasks:
    """Task names a harness ``TaskManager`` knows, with that manager (its index of every task is costly to build)."""

    names: list[str]
    manager: Any


def checked_tasks(config: HarnessConfig) -> CheckedTasks:
    """The task names and a harness ``TaskManager`` that knows them (local YAML folders included); a name neither
    knows is an error naming it (before a run starts, not after its last round)."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise ImportError(HARNESS_MISSING) from error
    names, folders = task_names(config.tasks)
    manager = TaskManager(include_path=folders or None)
    unknown = [name for name in names if not manager.match_tasks([name])]
    if unknown:
        raise ValueError(f"harness task(s) {unknown}: not a harness task or group, nor a task in the given YAML files")
    return CheckedTasks(names, manager)


def run_harness(model: nn.Module, tokenizer: PreTrainedTokenizerBase, config: HarnessConfig,
                device: torch.device, tasks: CheckedTasks | None = None) -> dict[str, Any]:
    """lm-evaluation-harness's results for ``model`` (already on ``device``): its ``results`` per task (metric
    ``name,filter`` -> value, stderr beside), ``versions``, ``n-shot`` and config, as ``simple_evaluate`` returns
    them, without the per-sample logs. ``tasks``: ``config``'s, checked already (else checked here)."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except ImportError as error:
        raise ImportError(HARNESS_MISSING) from error
    tasks = tasks or checked_tasks(config)
    language_model = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=config.batch_size, device=str(device))
    results = simple_evaluate(model=language_model, tasks=tasks.names, num_fewshot=config.num_fewshot,
                              limit=config.limit, task_manager=tasks.manager, log_samples=False,
                              apply_chat_template=config.apply_chat_template, gen_kwargs=config.gen_kwargs,
                              bootstrap_iters=0, confirm_run_unsafe_code=config.confirm_run_unsafe_code)
    return {key: value for key, value in results.items() if key != "samples"}


def harness_scores(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Task -> metric -> value (``acc``, ``exact_match,strict-match`` ...; no stderr, no alias)."""
    return {task: {metric.removesuffix(",none"): float(value) for metric, value in metrics.items()
                   if metric != "alias" and "_stderr" not in metric and isinstance(value, int | float)}
            for task, metrics in results["results"].items()}


def harness_row(results: dict[str, Any]) -> dict[str, float]:
    """The scores as one metrics.csv row's columns: ``harness/<task>/<metric>``."""
    return {f"harness/{task}/{metric}": value for task, metrics in harness_scores(results).items()
            for metric, value in metrics.items()}


def scores_table(results: dict[str, Any]) -> str:
    """The harness's own markdown table of the results."""
    from lm_eval.utils import make_table

    return make_table(results)
