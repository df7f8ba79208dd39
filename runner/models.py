"""Models and tokenizers: real checkpoints through ``from_pretrained``, tiny ones built offline, meta-device builds.

* Real models load with ``from_pretrained`` from ``model.path`` (a local dir) or ``model.hub_id``; weights as
  safetensors only, ``trust_remote_code`` off unless the model config turns it on.
* Tiny models (``model.build=tiny``) are built from ``model.architecture`` with a seeded random init and the project's
  tokenizer (:mod:`runner.tokenizer`), saved with ``save_pretrained`` into the cache, then loaded through the very same
  ``from_pretrained`` path as a real model.
* A dry-run builds any model from its architecture fields on the meta device: no weights, no download, no memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from runner.errors import ModelError

log = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def hf_config(model_cfg: Any):
    """The ``transformers`` config built from ``model.architecture`` (``model_type`` selects the class).

    Raises:
        ModelError: the architecture has no ``model_type`` or names an unknown one.
    """
    from omegaconf import OmegaConf
    from transformers import AutoConfig

    arch = OmegaConf.to_container(model_cfg.architecture, resolve=True) if not isinstance(
        model_cfg.architecture, dict) else dict(model_cfg.architecture)
    model_type = arch.pop("model_type", None)
    if not model_type:
        raise ModelError(f"model '{model_cfg.name}': 'model.architecture' has no 'model_type' (e.g. llama, qwen2).")
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        import difflib

        close = difflib.get_close_matches(str(model_type), list(CONFIG_MAPPING.keys()), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelError(f"model '{model_cfg.name}': 'model.architecture.model_type' is '{model_type}', which "
                         f"transformers does not know.{hint} Valid types are the keys of transformers' "
                         "CONFIG_MAPPING, e.g. llama, qwen2, mistral, gpt2.")
    try:
        return AutoConfig.for_model(model_type, **arch)
    except (ValueError, TypeError) as ex:
        raise ModelError(f"model '{model_cfg.name}': the 'model.architecture' fields do not fit model_type "
                         f"'{model_type}' ({' '.join(str(ex).split())[:300]}).") from None


def auto_class(model_cfg: Any):
    from transformers import AutoModel, AutoModelForCausalLM

    return {"causal_lm": AutoModelForCausalLM, "base": AutoModel}[model_cfg.auto_class]


def build_on_meta(model_cfg: Any):
    """The model built from its architecture fields on the meta device (parameter shapes, no storage).

    For a model with only ``model.path``, the architecture is read from that dir's ``config.json``.
    """
    import torch

    if model_cfg.architecture:
        config = hf_config(model_cfg)
    else:
        config = load_config(model_cfg)
    with torch.device("meta"):
        return auto_class(model_cfg).from_config(config)


def load_config(model_cfg: Any):
    from transformers import AutoConfig

    source = model_source(model_cfg)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=model_cfg.trust_remote_code,
                                          revision=model_cfg.revision)
    except Exception as ex:
        raise ModelError(f"model '{model_cfg.name}': cannot read a config from '{source}' "
                         f"({' '.join(str(ex).split())[:200]}); model.path must be a dir with config.json, or "
                         "model.hub_id a hub id (the hub needs the network).") from None


def count_params(model: Any) -> tuple[int, int]:
    """(total, trainable) parameter counts; tied tensors are counted once."""
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return total, trainable


def largest_module_params(model: Any) -> int:
    """Parameters held directly by the largest module (e.g. the embedding or ``lm_head``): what ZeRO-3 gathers at
    once (DeepSpeed's ``largest_layer_params``)."""
    best = 0
    for module in model.modules():
        best = max(best, sum(p.numel() for p in module.parameters(recurse=False)))
    return best


def tiny_cache_key(model_cfg: Any) -> str:
    """Hash of what defines a tiny model: architecture, init seed, chat template and the tokenizer corpus."""
    from omegaconf import OmegaConf

    from runner.tokenizer import corpus_fingerprint

    arch = OmegaConf.to_container(model_cfg.architecture, resolve=True) if not isinstance(
        model_cfg.architecture, dict) else model_cfg.architecture
    blob = json.dumps({"arch": arch, "seed": model_cfg.init_seed, "chat": model_cfg.chat_template,
                       "tok": corpus_fingerprint()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def ensure_tiny(model_cfg: Any, cache_dir: str | Path) -> Path:
    """Build (once) and return the directory of a tiny model saved with ``save_pretrained``.

    The model is written to a temporary dir and renamed into place, so a concurrent or killed build never leaves a
    half-written model behind.
    """
    import torch

    from runner.tokenizer import train_tokenizer

    target = Path(cache_dir) / "models" / f"{model_cfg.name}-{tiny_cache_key(model_cfg)}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    config = hf_config(model_cfg)
    tokenizer = train_tokenizer(config.vocab_size, model_cfg.chat_template)
    config.pad_token_id, config.bos_token_id = tokenizer.pad_token_id, tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    from transformers import AutoModelForCausalLM

    # Always the causal LM (backbone + head): ``AutoModel.from_pretrained`` loads the backbone of the same dir, so
    # one cache entry serves ``model.auto_class=causal_lm`` and ``base`` alike.
    with _seeded(model_cfg.init_seed):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.bos_token_id = tokenizer.bos_token_id
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("built tiny model %s at %s", model_cfg.name, target)
    return target


@contextlib.contextmanager
def _seeded(seed: int):
    import torch

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def model_source(model_cfg: Any, cache_dir: str | Path | None = None) -> str:
    """Where ``from_pretrained`` reads the model: ``model.path``, the tiny-model cache dir, or ``model.hub_id``."""
    if model_cfg.path:
        return str(model_cfg.path)
    if model_cfg.build == "tiny":
        if cache_dir is None:
            raise ModelError(f"model '{model_cfg.name}' is a tiny model and needs a cache dir to be built in.")
        return str(ensure_tiny(model_cfg, cache_dir))
    return str(model_cfg.hub_id)


def check_local_dir(path: str | Path, name: str, trust_remote_code: bool = False) -> None:
    """A local model dir must exist and hold a readable ``config.json`` and safetensors weights, and ship no code of
    its own unless ``model.trust_remote_code`` is on (file checks only: no torch, no transformers).

    Raises:
        ModelError: naming the dir and what it lacks.
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model '{name}': 'model.path' is '{p}', which does not exist; give a directory written by "
                         "save_pretrained (config.json and *.safetensors).")
    if not p.is_dir():
        raise ModelError(f"model '{name}': 'model.path' is '{p}', a file; give the checkpoint directory (the one "
                         "holding config.json and *.safetensors).")
    config = p / "config.json"
    if not config.exists():
        raise ModelError(f"model '{name}': '{p}' has no config.json; model.path must be a directory written by "
                         "save_pretrained.")
    try:
        fields = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, OSError) as ex:
        raise ModelError(f"model '{name}': '{config}' is not valid JSON ({ex}); restore it from the original "
                         "checkpoint.") from None
    if not isinstance(fields, dict):
        raise ModelError(f"model '{name}': '{config}' holds a JSON {type(fields).__name__}, not a model config "
                         "object.")
    if fields.get("auto_map") and not trust_remote_code:
        raise ModelError(f"model '{name}': '{p}' ships its own Python code (auto_map in config.json: "
                         f"{', '.join(sorted(fields['auto_map']))}), which the runner never runs by default. Use a "
                         "checkpoint of a built-in transformers architecture, or, if you trust its author, set "
                         "model.trust_remote_code=true in the model config.")
    if not any(p.glob("*.safetensors")):
        other = sorted(x.name for x in p.iterdir() if x.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        extra = f" It holds {', '.join(other)}: convert them to safetensors (pickled weights are not loaded)." if \
            other else " Weights are loaded from safetensors files only."
        raise ModelError(f"model '{name}': '{p}' has no *.safetensors weights.{extra}")


def torch_dtype(model_cfg: Any, precision: str):
    """The dtype weights are loaded in: ``model.dtype`` unless ``auto``, then the hardware precision."""
    import torch

    if model_cfg.dtype != "auto":
        return getattr(torch, _DTYPES[model_cfg.dtype])
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def load_tokenizer(model_cfg: Any, source: str, *, padding_side: str = "right"):
    """The tokenizer of ``source`` (or ``model.tokenizer``), with a pad token guaranteed.

    A tokenizer without a pad token is accepted and fixed safely: the pad token becomes ``unk`` when there is one
    distinct from EOS, else EOS (safe for training here because labels are built from lengths, never from pad ids);
    the fix is logged.
    """
    from transformers import AutoTokenizer

    tok_source = model_cfg.tokenizer if model_cfg.tokenizer not in (None, "builtin") else source
    try:
        tok = AutoTokenizer.from_pretrained(tok_source, trust_remote_code=model_cfg.trust_remote_code,
                                            revision=model_cfg.revision)
    except Exception as ex:
        raise ModelError(f"model '{model_cfg.name}': cannot load a tokenizer from '{tok_source}' "
                         f"({' '.join(str(ex).split())[:200]}).") from None
    if tok.pad_token_id is None:
        if tok.unk_token_id is not None and tok.unk_token_id != tok.eos_token_id:
            tok.pad_token = tok.unk_token
            log.warning("tokenizer of %s has no pad token: using unk %r as pad", model_cfg.name, tok.unk_token)
        elif tok.eos_token is not None:
            tok.pad_token = tok.eos_token
            log.warning("tokenizer of %s has no pad token: using eos %r as pad (labels keep the real EOS)",
                        model_cfg.name, tok.eos_token)
        else:
            raise ModelError(f"model '{model_cfg.name}': the tokenizer has neither a pad, unk nor eos token; give "
                             "model.tokenizer a tokenizer that has an EOS token.")
    tok.padding_side = padding_side
    return tok


def load_model(model_cfg: Any, hardware_cfg: Any, cache_dir: str | Path, *, precision: str | None = None):
    """Load (model, tokenizer) through ``from_pretrained``.

    Args:
        model_cfg: the ``model`` config node.
        hardware_cfg: the ``hardware`` config node (attention kernel).
        cache_dir: where tiny models are built.
        precision: resolved precision (``fp32``/``bf16``/``fp16``) deciding the load dtype under ``model.dtype=auto``.

    Raises:
        ModelError: a local dir without config or safetensors weights, an unreadable checkpoint.
    """
    source = model_source(model_cfg, cache_dir)
    if model_cfg.path or model_cfg.build == "tiny":
        check_local_dir(source, model_cfg.name, trust_remote_code=bool(model_cfg.trust_remote_code))
    tokenizer = load_tokenizer(model_cfg, source)
    kwargs: dict[str, Any] = {"dtype": torch_dtype(model_cfg, precision or "fp32"),
                              "trust_remote_code": model_cfg.trust_remote_code, "use_safetensors": True}
    if model_cfg.revision:
        kwargs["revision"] = model_cfg.revision
    if hardware_cfg is not None and hardware_cfg.attn_implementation:
        kwargs["attn_implementation"] = hardware_cfg.attn_implementation
    try:
        model = auto_class(model_cfg).from_pretrained(source, **kwargs)
    except Exception as ex:
        raise ModelError(f"model '{model_cfg.name}': from_pretrained('{source}') failed: "
                         f"{' '.join(str(ex).split())[:300]}") from None
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
