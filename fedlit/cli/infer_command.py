"""``fedlit infer``: ask the server's model, privately (``--private true --epsilon E``) or in the clear, for each
prompt of a file; the answers and the audit record (what was sent, what came back) are written locally. Across
parties, ``fedlit deploy --command infer`` runs :func:`run_deployed_infer` in the ServerApp."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, Namespace

from fedlit.backends.base import Backend
from fedlit.backends.messages import ClientFailure
from fedlit.files import atomic_write_bytes
from fedlit.inference.generation_server import GenerationServer
from fedlit.inference.inference_client import InferenceApps, InferenceConfig, ModelSpec
from fedlit.inference.inference_workflow import private_inference
from fedlit.inference.messages import Query
from fedlit.server.run_dir import lock_output_dir

if TYPE_CHECKING:
    from fedlit.flower.backend import FlowerBackend

CLIENT = "client"  # the one client `fedlit infer` asks for


def infer_parser(deployed: bool = False) -> ArgumentParser:
    """``fedlit infer``'s options; ``deployed``: the config of ``fedlit deploy --command infer``, which names no
    prompts, answers file or backend (each party names its own prompts and answers files, and may name its own
    local model and settings, in its party-config: they never reach the server)."""
    parser = ArgumentParser(description=(
        "Ask the server's model for each prompt of a file. Privately (the default, --private) every prompt is "
        "perturbed token by token (epsilon per token) before it leaves, and the local model extracts the answer "
        "from the server's continuation and the clear prompt. Answers and the audit record (prompt, sent, "
        "continuation, answer) go to --output."))
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file")
    if deployed:
        parser.add_argument("--output_dir", type=str, required=True,
                            help="the server's record: received.jsonl (every query as the server received it) and "
                                 "deployment.json")
    else:
        parser.add_argument("--prompts", type=str | None, default=None, help="a .json list or .jsonl file of prompts")
        parser.add_argument("--prompt", type=str | None, default=None, help="or one prompt")
        parser.add_argument("--output", type=str, required=True,
                            help="the answers file (JSON lines); never overwritten")
    parser.add_class_arguments(ModelSpec, "server", help="the server's model")
    parser.add_class_arguments(ModelSpec, "local", help="the client's own model (private inference)")
    parser.add_class_arguments(InferenceConfig, nested_key=None, fail_untyped=True, skip={"private"})
    parser.add_argument("--private", action=ActionYesNo, default=True,
                        help="perturb every prompt before it leaves (default); --no_private sends it in the clear")
    if not deployed:
        parser.add_subclass_arguments(Backend, "backend", required=False)
        parser.set_defaults({"backend": {"class_path": "fedlit.backends.LocalBackend"}})
    return parser


def inference_settings(config: Namespace | dict) -> InferenceConfig:
    return InferenceConfig(**{f.name: config[f.name] for f in fields(InferenceConfig) if f.name in config})


def local_model(local: Namespace | dict | None) -> ModelSpec | None:
    """The client's own model (the config's ``local``), if it names one."""
    local = vars(local) if isinstance(local, Namespace) else dict(local or {})
    return ModelSpec(**local) if local.get("model") or local.get("adapter") else None


def generation_server(config: Namespace, settings: InferenceConfig) -> GenerationServer:
    if not (config.server.model or config.server.adapter):
        raise ValueError("give the server's model: --server.model NAME_OR_DIR or --server.adapter DIR")
    model, tokenizer = ModelSpec(**vars(config.server)).load()
    return GenerationServer(model, tokenizer, settings.max_new_tokens)


def run_infer(config: Namespace, parser: ArgumentParser) -> int:
    """Ask; 0 when the answers file was written, 1 naming why not."""
    if (config.prompts is None) == (config.prompt is None):
        raise ValueError("give the prompts as --prompts FILE or one --prompt TEXT")
    output = Path(config.output)
    if output.exists():
        raise FileExistsError(f"--output {output} exists: fedlit infer never overwrites answers, choose another file")
    if config.prompts is not None and not Path(config.prompts).is_file():
        raise FileNotFoundError(f"prompts file {config.prompts}: no such file")
    settings = inference_settings(config)
    local = local_model(config.local)
    if settings.private and local is None:
        raise ValueError("private inference needs a local model (its embeddings pick the candidates, it extracts "
                         "the answer): --local.model NAME_OR_DIR or --local.adapter DIR, or --no_private")
    # a prompts file is read by the client where it runs (a Ray worker, not this process with the server's model)
    apps = InferenceApps({CLIENT: config.prompts or [config.prompt]}, {CLIENT: str(output)}, settings, local)
    server = generation_server(config, settings)
    (reply,) = private_inference(parser.instantiate_classes(config).backend, apps, server, [CLIENT]).values()
    if isinstance(reply, ClientFailure):
        raise RuntimeError(f"client '{CLIENT}' failed: {reply.reason}")
    print(f"{reply['answers']} answers in {output}" + (f" (each prompt token perturbed at epsilon "
          f"{settings.epsilon:g})" if settings.private else " (prompts sent in the clear)"))
    return 0


RECEIVED = "received.jsonl"  # a deployed run's record of every query as the server received it


def run_deployed_infer(config: Namespace, backend: FlowerBackend) -> None:
    """The server's side of ``fedlit deploy --command infer``: every party's query answered by the server's
    model, each party extracting its answers locally; ``output_dir/received.jsonl`` records each query exactly as
    the server received it (what the server learns). Fails naming the parties that did not get their answers."""
    output_dir = Path(config.output_dir)
    lock_output_dir(output_dir)  # one run at a time in it
    if (output_dir / RECEIVED).exists():
        raise FileExistsError(f"output_dir {output_dir} holds an earlier run's {RECEIVED}: choose another output_dir")
    settings = inference_settings(config)
    server = generation_server(config, settings)
    backend.on_client_errors("exclude")  # a party's failure is its own: the others still get their answers
    received: list[dict[str, Any]] = []

    def record(client_id: str, method: str, reply: Any) -> None:
        if method == "query" and isinstance(reply, Query):
            received.append({"client": client_id, **dataclasses.asdict(reply)})

    backend.on_receive = record
    replies = private_inference(backend, None, server, backend.client_ids())
    atomic_write_bytes(output_dir / RECEIVED, "".join(json.dumps(r) + "\n" for r in received).encode())
    failed = {c: r.reason for c, r in replies.items() if isinstance(r, ClientFailure)}
    if failed:
        raise RuntimeError("no answers for " + "; ".join(f"client '{c}': {why}" for c, why in failed.items()))
    print(f"{sum(r['answers'] for r in replies.values())} answers, each in its party's own answers file; what the "
          f"server received: {output_dir / RECEIVED}")
