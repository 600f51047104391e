"""``fedlit infer``: ask the server's model, privately (``--private true --epsilon E``) or in the clear, for each
prompt of a file; the answers and the audit record (what was sent, what came back) are written locally."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, Namespace

from fedlit.backends.base import Backend
from fedlit.backends.messages import ClientFailure
from fedlit.inference.generation_server import GenerationServer
from fedlit.inference.inference_client import InferenceApps, InferenceConfig, ModelSpec
from fedlit.inference.private_inference import private_inference

CLIENT = "client"  # the one client `fedlit infer` asks for


def infer_parser() -> ArgumentParser:
    parser = ArgumentParser(description=(
        "Ask the server's model for each prompt of a file. Privately (the default, --private) every prompt is "
        "perturbed token by token (epsilon per token) before it leaves, and the local model extracts the answer "
        "from the server's continuation and the clear prompt. Answers and the audit record (prompt, sent, "
        "continuation, answer) go to --output."))
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file")
    parser.add_argument("--prompts", type=str | None, default=None, help="a .json list or .jsonl file of prompts")
    parser.add_argument("--prompt", type=str | None, default=None, help="or one prompt")
    parser.add_argument("--output", type=str, required=True, help="the answers file (JSON lines); never overwritten")
    parser.add_class_arguments(ModelSpec, "server", help="the server's model")
    parser.add_class_arguments(ModelSpec, "local", help="the client's own model (private inference)")
    parser.add_class_arguments(InferenceConfig, nested_key=None, fail_untyped=True, skip={"private"})
    parser.add_argument("--private", action=ActionYesNo, default=True,
                        help="perturb every prompt before it leaves (default); --no_private sends it in the clear")
    parser.add_subclass_arguments(Backend, "backend", required=False)
    parser.set_defaults({"backend": {"class_path": "fedlit.backends.LocalBackend"}})
    return parser


def run_infer(config: Namespace, parser: ArgumentParser) -> int:
    """Ask; 0 when the answers file was written, 1 naming why not."""
    if (config.prompts is None) == (config.prompt is None):
        raise ValueError("give the prompts as --prompts FILE or one --prompt TEXT")
    output = Path(config.output)
    if output.exists():
        raise FileExistsError(f"--output {output} exists: fedlit infer never overwrites answers, choose another file")
    if config.prompts is not None and not Path(config.prompts).is_file():
        raise FileNotFoundError(f"prompts file {config.prompts}: no such file")
    settings = InferenceConfig(**{f.name: config[f.name] for f in fields(InferenceConfig)})
    local = ModelSpec(**vars(config.local)) if config.local.model or config.local.adapter else None
    if not (config.server.model or config.server.adapter):
        raise ValueError("give the server's model: --server.model NAME_OR_DIR or --server.adapter DIR")
    if settings.private and local is None:
        raise ValueError("private inference needs a local model (its embeddings pick the candidates, it extracts "
                         "the answer): --local.model NAME_OR_DIR or --local.adapter DIR, or --no_private")
    # a prompts file is read by the client where it runs (a Ray worker, not this process with the server's model)
    apps = InferenceApps({CLIENT: config.prompts or [config.prompt]}, {CLIENT: str(output)}, settings, local)
    model, tokenizer = ModelSpec(**vars(config.server)).load()
    server = GenerationServer(model, tokenizer, settings.max_new_tokens)
    (reply,) = private_inference(parser.instantiate_classes(config).backend, apps, server, [CLIENT]).values()
    if isinstance(reply, ClientFailure):
        raise RuntimeError(f"client '{CLIENT}' failed: {reply.reason}")
    print(f"{reply['answers']} answers in {output}" + (f" (each prompt token perturbed at epsilon "
          f"{settings.epsilon:g})" if settings.private else " (prompts sent in the clear)"))
    return 0
