"""``fedlit verify``: ownership watermark keys checked against an adapter or a full model."""

from __future__ import annotations

from pathlib import Path

from jsonargparse import ArgumentParser, Namespace

from fedlit.cli.errors import EXIT_NOT_VERIFIED
from fedlit.devices import DEVICE_HELP
from fedlit.watermark import Verification


def add_trained_model_arguments(parser: ArgumentParser) -> None:
    """``--adapter`` (loaded with plain peft on its base), or ``--model`` (a full model), and ``--base``: what
    :func:`~fedlit.models.load_trained_model` loads (``fedlit verify``, ``fedlit evaluate``)."""
    parser.add_argument("--adapter", type=str | None, default=None, help="a peft adapter directory")
    parser.add_argument("--model", type=str | None, default=None,
                        help="or a full model directory or name (FedOST's plugged_in, FedCoLLM's LLM)")
    parser.add_argument("--base", type=str | None, default=None,
                        help="the adapter's base model (default: the one its adapter_config.json names)")


def verify_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Check ownership watermark keys against an adapter (loaded with plain peft on "
                            "its base model) or a full model: sign-bit detection and trigger accuracy, each with the "
                            "chance that a model without the watermark scores as high. Exit 0 when every key is "
                            "verified, 4 when one is not.")
    add_trained_model_arguments(parser)
    parser.add_argument("--key", type=list[str], required=True, help="key file(s), e.g. --key '[a.json, b.json]'")
    parser.add_argument("--fpr", type=float, default=1e-6, help="false-positive rate of the verdict")
    parser.add_argument("--device", type=str, default="auto", help=DEVICE_HELP)
    parser.add_argument("--output", type=str | None, default=None,
                        help="also write the results as JSON here (a new file: never overwritten)")
    return parser


def run_verify(config: Namespace) -> int:
    """Print one line per key; 0 when every key is verified, :data:`EXIT_NOT_VERIFIED` otherwise."""
    import json

    from fedlit.files import atomic_write_bytes
    from fedlit.models import load_trained_model
    from fedlit.watermark import WatermarkKey, verify

    if config.output is not None and Path(config.output).exists():
        raise FileExistsError(f"--output {config.output} exists: fedlit verify never overwrites a file (a key file, "
                              "say), choose another")
    keys = [(path, WatermarkKey.load(path)) for path in config.key]
    model = load_trained_model(config.adapter, config.model, config.base, device=config.device)
    results = [(path, verify(model, key, config.fpr, f"watermark key {path}")) for path, key in keys]
    for path, result in results:
        print(f"{path} (owner {result.owner}): {verification_line(result)}")
    if config.output is not None:
        atomic_write_bytes(Path(config.output), json.dumps([r.as_dict() for _, r in results], indent=1).encode())
    return 0 if all(r.verified for _, r in results) else EXIT_NOT_VERIFIED


def verification_line(result: Verification) -> str:
    """One key's scores and verdict, as ``fedlit verify`` prints them."""
    parts = []
    if result.signature is not None:
        s = result.signature
        parts.append(f"signature {s.matched}/{s.total} bits ({s.rate:.1%}), p={s.p_value:.2g}")
    if result.trigger is not None:
        t = result.trigger
        base = "" if t.baseline is None else f"; base model {t.baseline:.1%}"
        parts.append(f"trigger {t.matched}/{t.total} tokens ({t.rate:.1%}{base}), p={t.p_value:.2g}")
    verdict = "VERIFIED" if result.verified else "not verified"
    return f"{'; '.join(parts)}: {verdict} (fpr {result.fpr:g})"
