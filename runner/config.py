"""Typed config schemas, their registration in Hydra's ConfigStore, composition and cross-field validation.

Every key has one home: model knobs under ``model.*``, method knobs under ``method.*`` (each method's schema lives
with its recipe, e.g. ``recipes/sft/config.py``, and is reached through :mod:`runner.registry`), general training
knobs under ``train.*``, evaluation under ``eval.*``. A wrong type or an unknown key fails at compose time; the
cross-field checks of :func:`validate` run before any model or data is loaded.

This module imports no torch and no transformers: ``run --help``, ``run --cfg job`` and every config error stay fast.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from runner.errors import ConfigError, RunnerError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("model", "method", "data", "hardware", "logger", "experiment")


def package_dir(package: str, sub: str = "") -> Optional[str]:
    """The directory of the installed Python package ``package`` joined with ``sub``, or None when either is absent.

    Found with ``importlib.util.find_spec`` (the package is not imported). Registered as the OmegaConf resolver
    ``${pkg_dir:<package>,<sub>}``, so a model config can point ``model.path`` at weights shipped inside a pip package
    (``conf/model/minilm-l6.yaml``) and fall back to ``model.hub_id`` where the package is not installed.
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / sub
    return str(path) if path.exists() else None


OmegaConf.register_new_resolver("pkg_dir", package_dir, replace=True)


# --------------------------------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """A model: a real checkpoint (hub id or local dir) or a tiny model built offline from its architecture."""

    name: str = MISSING
    """Short name of the config option (``tiny-llama``, ``llama2-7b``...)."""
    build: str = "hub"
    """``hub``: load ``path`` or ``hub_id`` with ``from_pretrained``. ``tiny``: build a random-init model from
    ``architecture`` and the project's own tokenizer, save it with ``save_pretrained`` into the model cache, then load
    it through the same ``from_pretrained`` path."""
    hub_id: Optional[str] = None
    """Hugging Face hub id of the real model (e.g. ``meta-llama/Llama-2-7b-hf``)."""
    path: Optional[str] = None
    """A local directory holding ``config.json``, safetensors weights and the tokenizer; wins over ``hub_id``."""
    architecture: dict[str, Any] = field(default_factory=dict)
    """HF config fields, ``model_type`` included. A dry-run builds the model from them on the meta device, with no
    download, so they must match the real checkpoint."""
    tokenizer: Optional[str] = None
    """Tokenizer source: ``builtin`` (the project's own byte-level BPE, see ``runner/tokenizer.py``), a hub id or a
    local dir. ``null`` means the model's own (``path`` or ``hub_id``)."""
    chat_template: Optional[str] = None
    """A Jinja chat template to install on a ``tiny`` model's tokenizer (real models bring their own)."""
    auto_class: str = "causal_lm"
    """Which ``AutoModel*`` class loads it: ``causal_lm`` or ``base`` (a backbone without a head)."""
    dtype: str = "auto"
    """Weights dtype at load time: ``auto`` (the hardware's precision), ``float32``, ``bfloat16`` or ``float16``."""
    trust_remote_code: bool = False
    """Off unless this model config turns it on: never run code shipped with a checkpoint by default."""
    revision: Optional[str] = None
    """A hub revision (branch, tag or commit) to pin."""
    init_seed: int = 0
    """Seed of the random initialisation of a ``tiny`` model (part of its cache key)."""


@dataclass
class MethodConfig:
    """Base of every method schema. Each method's own knobs live in a subclass next to its recipe."""

    name: str = MISSING
    """The method's name (``sft``, ``lora``, ``slam``...); must be a key of ``runner.registry.METHODS``."""
    recipe: str = MISSING
    """The recipe family that runs it; must match the registry entry of ``name``."""
    use_chat_template: bool = False
    """Format prompts with the tokenizer's chat template (an error if the tokenizer has none)."""

    @classmethod
    def check(cls, cfg: DictConfig) -> list[str]:
        """Cross-field checks of this method against the whole config; returns problems (empty when valid)."""
        return []


@dataclass
class DataConfig:
    """A dataset: its loader (``format``), where it comes from, its splits, field mapping and prompt template."""

    name: str = MISSING
    """Short name of the config option."""
    format: str = MISSING
    """The loader in ``runner/data.py``: ``arith`` (built-in synthetic), ``mgsm``, ``msvamp``, ``gsm8k``..."""
    hub_id: Optional[str] = None
    """Hugging Face dataset id, used when ``path`` is null."""
    path: Optional[str] = None
    """A local file or directory with the data; wins over ``hub_id``."""
    train_split: Optional[str] = "train"
    """Split used for training; null when the dataset has none (evaluation-only)."""
    eval_split: Optional[str] = "test"
    """Split used for evaluation; null for none."""
    languages: Optional[list[str]] = None
    """Languages to keep (ISO 639-1 codes, e.g. ``[de, zh]``); null keeps every language of the dataset."""
    subsets: Optional[list[str]] = None
    """Named parts of the dataset to load (MRMBench dimensions such as ``[harmlessness, verbosity]``, HH-RLHF subsets
    such as ``[helpful-base, harmless-base]``); null loads every part the data config lists as its default."""
    max_samples: Optional[int] = None
    """Cap on training rows (after language selection; taken round-robin over languages); null for all."""
    fields: dict[str, str] = field(default_factory=dict)
    """Source field name for each canonical field (``question``, ``solution``, ``answer``), where the loader's
    default does not fit."""
    prompt_template: str = "Question: {question}\nAnswer:"
    """Python format string of the prompt; fields: ``{question}``."""
    completion_template: str = " {solution}"
    """Python format string of the training target; fields: ``{solution}``, ``{answer}``."""
    answer_match: str = "numeric"
    """How a model's answer is compared with the gold one: ``numeric`` (the last number or ``\\boxed{}`` number,
    for GSM8K/MGSM-style answers) or ``math_verify`` (``\\boxed{}`` LaTeX answers compared by the ``math-verify``
    library, for competition math)."""
    train_size: Optional[int] = None
    """Rows per language of the training split of a generated dataset (``arith``); pairs per HH-RLHF subset of a
    derived probing task's training split (``hh-probe``)."""
    eval_size: Optional[int] = None
    """Rows per language of the evaluation split of a generated dataset (``arith``); pairs per HH-RLHF subset of a
    derived probing task's test split (``hh-probe``)."""
    seed: int = 0
    """Seed of a generated dataset and of row sub-sampling."""


@dataclass
class HardwareConfig:
    """Where the run executes: CPU, one GPU, or several processes (DDP or DeepSpeed) on one or more nodes."""

    name: str = MISSING
    """Short name of the config option."""
    device: str = "cpu"
    """``cpu`` or ``cuda``."""
    precision: str = "fp32"
    """``fp32``, ``bf16``, ``fp16``, or ``auto`` (bf16 where the GPU supports it, else fp16; fp32 on CPU)."""
    attn_implementation: str = "sdpa"
    """Attention kernel passed to ``from_pretrained`` (``sdpa``, ``eager``, ``flash_attention_2``)."""
    num_threads: Optional[int] = None
    """CPU threads for torch (null: torch's default)."""
    distributed: str = "none"
    """``none`` (one process), ``ddp`` or ``deepspeed``."""
    nproc_per_node: int = 1
    """Processes per node (one per GPU)."""
    nnodes: int = 1
    """Number of nodes."""
    node_rank: int = 0
    """This node's rank among ``nnodes``."""
    master_addr: str = "127.0.0.1"
    """Rendezvous address (rank 0's host)."""
    master_port: int = 29500
    """Rendezvous port."""
    hostfile: Optional[str] = None
    """DeepSpeed hostfile, as an alternative to ``nnodes``/``master_addr``."""
    backend: str = "auto"
    """Process-group backend: ``auto`` (nccl on cuda, gloo on cpu), ``gloo`` or ``nccl``."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage (0-3); used when ``distributed=deepspeed``."""
    offload_optimizer: bool = False
    """DeepSpeed: keep optimizer states in CPU memory."""
    offload_param: bool = False
    """DeepSpeed ZeRO-3: keep parameters in CPU memory."""
    gpu_memory_gb: Optional[float] = None
    """Memory of one GPU, for the dry-run's fit check (null: not checked)."""


@dataclass
class LoggerConfig:
    """Experiment tracking. Files in the run dir are always written; a logger adds a tracker."""

    name: str = MISSING
    """``none``, ``wandb`` or ``tensorboard``."""
    project: str = "runner"
    """wandb project."""
    entity: Optional[str] = None
    """wandb entity (team or user)."""
    mode: str = "auto"
    """wandb mode: ``auto`` (online with an API key, offline without: needs no network), ``online``, ``offline``."""
    tags: list[str] = field(default_factory=list)
    """wandb tags."""


@dataclass
class TrainConfig:
    """General training knobs, shared by every recipe that trains."""

    lr: float = 2e-5
    """Peak learning rate."""
    epochs: float = 1.0
    """Passes over the training rows (ignored when ``max_steps`` > 0)."""
    max_steps: int = -1
    """Optimizer steps; -1 derives them from ``epochs``; 0 trains nothing (evaluation only)."""
    micro_batch_size: int = 4
    """Rows per forward pass per process."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    global_batch_size: Optional[int] = None
    """If set, must equal micro_batch_size x grad_accum_steps x world size (a check, not a knob)."""
    max_seq_len: int = 512
    """Maximum tokens of prompt + completion; longer rows are dropped and counted."""
    warmup_ratio: float = 0.0
    """Fraction of steps with linear warm-up."""
    lr_scheduler: str = "cosine"
    """``cosine``, ``linear`` or ``constant`` (after warm-up)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables it)."""
    batching: str = "length_grouped"
    """``random``, ``length_grouped`` (similar lengths per batch: less padding, the CPU win), or ``sequential``."""
    padding_free: bool = True
    """Flatten each micro-batch into one row without padding, attention kept per sequence (``runner/padding_free.py``):
    the linear layers see only real tokens. Used where the loss is the model's own token cross-entropy (``sft``,
    ``slam``, ``lora``) and attention is SDPA or FlashAttention; methods whose loss reads rows apart (``oxa``, ``gram``)
    and ``hardware.attn_implementation=eager`` batch with padding."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    logging_steps: int = 1
    """Log train metrics every N optimizer steps (to ``metrics.jsonl`` and the tracker)."""
    eval_steps: int = 0
    """Evaluate every N optimizer steps during training (0: only after training)."""
    save_steps: int = 0
    """Save a checkpoint every N optimizer steps (0: only the final one)."""
    save_final: bool = True
    """Save the final weights to ``checkpoints/step-N``."""
    keep_last_n: Optional[int] = None
    """Keep only the N most recent periodic checkpoints (null keeps all)."""


@dataclass
class EvalConfig:
    """Evaluation knobs, shared by every recipe that evaluates."""

    enabled: bool = True
    """Evaluate after training."""
    split: Optional[str] = None
    """Override ``data.eval_split``."""
    max_samples: Optional[int] = None
    """Rows per language evaluated (null: all)."""
    batch_size: int = 8
    """Prompts per generation batch."""
    max_new_tokens: int = 256
    """Generation budget per answer."""
    num_samples: int = 1
    """Samples per problem (n); 1 with temperature 0 is greedy decoding."""
    temperature: float = 0.0
    """Sampling temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    pass_at_k: list[int] = field(default_factory=lambda: [1])
    """k values reported for Pass@k (each must be <= num_samples)."""
    repeats: int = 1
    """Repeat the whole evaluation N times and report the mean and standard deviation of accuracy."""


@dataclass
class RunConfig:
    """The root config: the chosen groups, the general sections, and the run's own switches."""

    model: ModelConfig = MISSING
    method: MethodConfig = MISSING
    data: DataConfig = MISSING
    hardware: HardwareConfig = MISSING
    logger: LoggerConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    """Seed of everything random in the run."""
    dry_run: bool = False
    """Compose, validate, plan (parameter counts, rows, steps, memory), write ``plan.json``, and stop."""
    resume: bool = False
    """Continue the run in ``run_dir`` from its latest complete checkpoint."""
    resume_force: bool = False
    """Resume even though the model or data config changed since the checkpoint."""
    run_dir: str = "${hydra:runtime.output_dir}"
    """Where the run writes (fixed once by the launching process)."""
    cache_dir: str = "${oc.env:RUNNER_CACHE,${oc.env:HOME}/.cache/runner}"
    """Cache of built tiny models and generated data."""


# --------------------------------------------------------------------------------------------------------------------
# Registration and composition
# --------------------------------------------------------------------------------------------------------------------

_REGISTERED = False


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore: ``run_schema`` at the root and ``schema/<group>/<name>`` per group.

    Method schemas are imported lazily from the import strings of :data:`runner.registry.METHODS`.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    from hydra.core.config_store import ConfigStore

    from runner import registry

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    for group, node in (("model", ModelConfig), ("data", DataConfig), ("hardware", HardwareConfig),
                        ("logger", LoggerConfig)):
        cs.store(group=f"schema/{group}", name="base", node=node)
    for name in registry.METHODS:
        cs.store(group="schema/method", name=name, node=registry.method_schema(name))
    _REGISTERED = True


def group_options(group: str) -> list[str]:
    """The option names of a config group, from the yaml files in ``conf/<group>/``."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose(overrides: list[str] | tuple[str, ...] = (), return_hydra_config: bool = False) -> DictConfig:
    """Compose ``conf/config.yaml`` with ``overrides`` through Hydra's Compose API (tests and the CLI's pre-flight).

    Raises:
        ConfigError: a one-paragraph message naming the key or group at fault and what would be valid.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)
    except Exception as ex:  # Hydra and OmegaConf raise many types; all of them are the user's config here
        raise compose_error(ex, list(overrides)) from None
    finally:
        GlobalHydra.instance().clear()


def _schema_keys(full_key: str) -> tuple[str, list[str]]:
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    schemas = {"train": TrainConfig, "eval": EvalConfig, "model": ModelConfig, "data": DataConfig,
               "hardware": HardwareConfig, "logger": LoggerConfig, "": RunConfig}
    node = schemas.get(parent)
    keys = list(node.__dataclass_fields__) if node is not None else []
    return parent, keys


def compose_error(ex: BaseException, overrides: list[str]) -> ConfigError:
    """Turn a Hydra/OmegaConf composition exception into a one-paragraph :class:`ConfigError`."""
    msg = str(ex)
    cause = ex.__cause__ or ex.__context__
    detail = str(cause) if cause is not None else ""
    text = f"{msg}\n{detail}"

    if type(ex).__name__ in ("ParserError", "ScannerError", "ComposerError", "ConstructorError") or \
            "while parsing" in msg or "while scanning" in msg:
        m = re.search(r'in "([^"]+)", line (\d+), column (\d+)', msg)
        where = f"'{m.group(1)}' line {m.group(2)}, column {m.group(3)}" if m else "a config file"
        first = " ".join(msg.split("\n")[0].split())
        problem = " ".join(" ".join(msg.split("\n")[2:3]).split()) or first
        return ConfigError(f"{where} is not valid YAML ({first}: {problem}). Fix the file: a value is "
                           "'key: value', a list '[a, b]' or one '- item' per line, and brackets and quotes must "
                           "close.")
    in_file = re.search(r"^In '([^']+)':", msg)
    origin = f" (in conf file '{in_file.group(1)}.yaml')" if in_file else ""

    m = re.search(r"Could not find '([\w\-/]+)/([^']+)'", text)
    if m:
        group, option = m.group(1), m.group(2)
        valid = ", ".join(group_options(group)) or "(none)"
        return ConfigError(f"'{group}={option}': there is no '{option}' in config group '{group}' "
                           f"(conf/{group}/). Valid options: {valid}.")

    m = re.search(r"full_key: ([\w.\[\]]+)", text)
    key = m.group(1) if m else None
    if key is None:
        m = re.search(r"override '?([\w.]+)", text)
        key = m.group(1).split("=")[0] if m else None

    if re.search(r"Key '([^']+)' not in '(\w+)'", text) or "not in struct" in text or "ConfigKeyError" in type(
            cause).__name__:
        name = key or "?"
        m2 = re.search(r"Key '([^']+)' not in '(\w+)'", text)
        schema = m2.group(2) if m2 else ""
        parent, valid = _schema_keys(name)
        if name.startswith("method.") and schema:
            from runner import registry
            cls = registry.schema_by_class_name(schema)
            valid = list(cls.__dataclass_fields__) if cls else []
        leaf = name.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(leaf, valid, n=1)
        hint = f" Did you mean '{(parent + '.') if parent else ''}{close[0]}'?" if close else ""
        if parent == "model" and not close:
            hint = f" Architecture fields go under 'model.architecture' (e.g. model.architecture.{leaf}=...)."
        listing = f" Valid keys under '{parent or '<root>'}': {', '.join(valid)}." if valid else ""
        if parent in _OPEN_MAPPINGS:
            return ConfigError(f"'{name}' is a new entry of the mapping '{parent}'{origin}; a new entry takes a "
                               f"leading '+': +{name}=<value> (existing entries are overridden without it).")
        return ConfigError(f"Unknown key '{name}'{(' in ' + schema) if schema else ''}{origin}.{hint}{listing}")

    m = re.search(r"Value '([^']*)' (?:of type '(\w+)' )?could not be converted to (\w+)", text)
    if m:
        kind = m.group(3).lower()
        article = "an" if kind[:1] in "aeiou" else "a"
        return ConfigError(f"'{key}' got the value '{m.group(1)}'{origin}, which is not a valid {m.group(3)}. "
                           f"Give '{key}' {article} {kind} value, e.g. {_example(m.group(3), key)}.")
    m = re.search(r"Value '([^']*)' is not a valid (bool|int|float)", text)
    if m:
        kind = {"bool": "Boolean", "int": "Integer", "float": "Float"}[m.group(2)]
        return ConfigError(f"'{key}' got the value '{m.group(1)}'{origin}, which is not a valid {kind}. Give "
                           f"'{key}' a {kind.lower()} value, e.g. {_example(kind, key)}.")
    if re.search(r"is not a ListConfig, list or tuple", text):
        return ConfigError(f"'{key}' must be a list{origin}; write it in brackets, e.g. {key}=[1,4].")
    if re.search(r"Cannot assign \w+ to Dict", text):
        return ConfigError(f"'{key}' must be a mapping{origin}; set its entries one by one ({key}.<name>=<value>) "
                           f"or write {key}={{name: value}}.")
    m = re.search(r"is not a subclass of (\w+)", text)
    if m and key:
        parent, valid = _schema_keys(f"{key}.x")
        return ConfigError(f"'{key}' is a section ({m.group(1)}), not a value; set its keys instead, e.g. "
                           f"{key}.{valid[0] if valid else '<key>'}=<value>. Keys under '{key}': {', '.join(valid)}.")
    m = re.search(r"Invalid value '([^']*)', expected one of \[([^\]]*)\]", text)
    if m:
        return ConfigError(f"'{key}' got '{m.group(1)}'; valid values: {m.group(2)}.")
    if "Missing mandatory value" in text:
        return ConfigError(f"'{key}' is required and has no value. Set it on the command line, e.g. {key}=<value>.")
    if "OverrideParseException" in type(ex).__name__ or "mismatched input" in text or "no viable" in text:
        first = " ".join(msg.split())
        return ConfigError(f"Could not parse the command line overrides {overrides}: {first}. Overrides look like "
                           "key=value, group=option, +new_key=value or ~key.")
    first = " ".join(f"{msg} {detail}".split())
    return ConfigError(f"{first}" + (f" (key '{key}')" if key and key not in first else ""))


_OPEN_MAPPINGS = ("model.architecture", "data.fields")
"""Dict-typed keys whose entries are free (new ones are added with ``+key.entry=value``)."""


def _example(type_name: str, key: str | None) -> str:
    examples = {"Float": "2e-5", "Integer": "4", "Boolean": "true"}
    return f"{key}={examples.get(type_name, '<value>')}"


# --------------------------------------------------------------------------------------------------------------------
# Cross-field validation (no model or data loaded)
# --------------------------------------------------------------------------------------------------------------------


def world_size(cfg: DictConfig) -> int:
    """Number of processes of the run: ``nproc_per_node x nnodes``, or the slots of ``hardware.hostfile``
    (1 without a distributed launcher).

    Raises:
        ConfigError: the hostfile is missing or malformed.
    """
    hw = cfg.hardware
    if hw.distributed == "none":
        return 1
    if hw.hostfile:
        from runner.launch import parse_hostfile

        hosts = parse_hostfile(hw.hostfile)
        return len(hosts) * hosts[0][1]
    return int(hw.nproc_per_node) * int(hw.nnodes)


def global_batch_size(cfg: DictConfig) -> int:
    """Rows per optimizer step: ``micro_batch_size x grad_accum_steps x world size``."""
    return int(cfg.train.micro_batch_size) * int(cfg.train.grad_accum_steps) * world_size(cfg)


def steps_for(rows: int, cfg: Any) -> int:
    """Optimizer steps of a run over ``rows`` training rows, as the HF Trainer counts them.

    ``train.max_steps`` when positive; else ``ceil(epochs x steps_per_epoch)`` with
    ``steps_per_epoch = max(ceil(ceil(rows / world / micro_batch_size) / grad_accum_steps), 1)``.
    """
    t = cfg.train
    if t.max_steps >= 0:
        return int(t.max_steps)
    if rows == 0:
        return 0
    per_process = math.ceil(rows / world_size(cfg))
    micro_batches = math.ceil(per_process / t.micro_batch_size)
    per_epoch = max(math.ceil(micro_batches / t.grad_accum_steps), 1)
    return math.ceil(t.epochs * per_epoch)



_CHOICES = {
    "train.lr_scheduler": ("cosine", "linear", "constant"),
    "train.batching": ("random", "length_grouped", "sequential"),
    "hardware.device": ("cpu", "cuda"),
    "hardware.precision": ("fp32", "bf16", "fp16", "auto"),
    "hardware.distributed": ("none", "ddp", "deepspeed"),
    "hardware.backend": ("auto", "gloo", "nccl"),
    "logger.name": ("none", "wandb", "tensorboard"),
    "logger.mode": ("auto", "online", "offline", "disabled"),
    "model.build": ("hub", "tiny"),
    "model.auto_class": ("causal_lm", "base"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "data.answer_match": ("numeric", "math_verify"),
}


def missing_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Dotted keys whose value is the mandatory-missing marker ``???`` (the ``hydra`` node is skipped; no
    interpolation is resolved)."""
    out: list[str] = []
    for key in cfg.keys():
        if not prefix and key == "hydra":
            continue
        full = f"{prefix}{key}"
        if OmegaConf.is_missing(cfg, key):
            out.append(full)
            continue
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and not node._is_none() and not node._is_interpolation():
            out.extend(missing_keys(node, full + "."))
    return out


def check_group_choices(cfg: DictConfig) -> None:
    """Every chosen group option exists. Hydra silently skips an unknown option of an optional group
    (``experiment=typo`` would run without the experiment); this refuses it.

    Needs the composed config with its ``hydra`` node (``compose(..., return_hydra_config=True)``).

    Raises:
        ConfigError: naming the option and the valid ones (from every ``file://`` dir of the search path).
    """
    runtime = OmegaConf.select(cfg, "hydra.runtime")
    if runtime is None:
        return
    dirs = [Path(src.path) for src in runtime.config_sources if src.schema == "file" and src.path]
    for group in GROUPS:
        choice = runtime.choices.get(group)
        if choice in (None, "null"):
            continue
        if not any((d / group / f"{choice}.yaml").exists() for d in dirs):
            valid = sorted({p.stem for d in dirs for p in (d / group).glob("*.yaml")})
            raise ConfigError(f"'{group}={choice}': there is no '{choice}' in config group '{group}' "
                              f"({', '.join(str(d / group) for d in dirs)}). Valid options: "
                              f"{', '.join(valid) or '(none)'}.")


def validate(cfg: DictConfig) -> None:
    """Cross-field checks that need no model and no data; raises one :class:`ConfigError` listing every problem.

    Checks: choice-valued keys; the method is in the registry and belongs to its recipe; the method's own checks
    against the model (e.g. SLAM's layers exist); batch arithmetic; evaluation settings; the model has a source; a
    local ``model.path`` holds a config and safetensors weights; a local ``data.path`` exists (file checks only).
    """
    from runner import registry

    problems: list[str] = []
    missing = missing_keys(cfg)
    if missing:  # nothing else can be checked reliably, and reading one of them would raise
        raise ConfigError(f"the config has {len(missing)} required key(s) without a value (???): "
                          f"{', '.join(missing)}. Set each on the command line (e.g. {missing[0]}=<value>) or in "
                          "the group's yaml.")
    allowed = set(RunConfig.__dataclass_fields__) | {"hydra"}
    for key in cfg:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            problems.append(f"Unknown top-level key '{key}'.{hint} Valid top-level keys: "
                            f"{', '.join(sorted(allowed - {'hydra'}))}.")
    for key, choices in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            problems.append(f"'{key}' is '{value}'; valid values: {', '.join(choices)}.")

    method = cfg.method
    if method.name not in registry.METHODS:
        problems.append(f"'method.name' is '{method.name}', which the registry does not know; valid methods: "
                        f"{', '.join(sorted(registry.METHODS))}.")
    else:
        expected = registry.METHODS[method.name][0]
        if method.recipe != expected:
            problems.append(f"'method.recipe' is '{method.recipe}' but method '{method.name}' runs under recipe "
                            f"'{expected}'; set method.recipe={expected}.")
    if method.recipe not in registry.RECIPES:
        problems.append(f"'method.recipe' is '{method.recipe}'; valid recipes: {', '.join(sorted(registry.RECIPES))}.")

    schema = OmegaConf.get_type(method)
    if isinstance(schema, type) and issubclass(schema, MethodConfig):
        problems.extend(schema.check(cfg))

    train, ev, hw = cfg.train, cfg.eval, cfg.hardware
    for key in ("micro_batch_size", "grad_accum_steps", "max_seq_len"):
        if train[key] < 1:
            problems.append(f"'train.{key}' is {train[key]}; it must be at least 1.")
    if train.lr <= 0:
        problems.append(f"'train.lr' is {train.lr}; it must be positive.")
    if train.max_steps < -1:
        problems.append(f"'train.max_steps' is {train.max_steps}; use -1 (derive from train.epochs), 0 (no "
                        "training) or a positive step count.")
    if train.max_steps == -1 and train.epochs <= 0:
        problems.append(f"'train.epochs' is {train.epochs} with train.max_steps=-1; give a positive number of "
                        "epochs or set train.max_steps.")
    if not 0.0 <= train.warmup_ratio < 1.0:
        problems.append(f"'train.warmup_ratio' is {train.warmup_ratio}; it must lie in [0, 1).")
    for key in ("nproc_per_node", "nnodes"):
        if hw[key] < 1:
            problems.append(f"'hardware.{key}' is {hw[key]}; it must be at least 1.")
    if not 0 <= hw.node_rank < max(hw.nnodes, 1):
        problems.append(f"'hardware.node_rank' is {hw.node_rank}; it must lie in [0, hardware.nnodes={hw.nnodes}).")
    if hw.distributed == "none" and (hw.nproc_per_node > 1 or hw.nnodes > 1):
        problems.append(f"'hardware.nproc_per_node'={hw.nproc_per_node} and 'hardware.nnodes'={hw.nnodes} need a "
                        "launcher: set hardware.distributed=ddp or deepspeed (or use hardware=deepspeed).")
    if hw.zero_stage not in (0, 1, 2, 3):
        problems.append(f"'hardware.zero_stage' is {hw.zero_stage}; valid stages: 0, 1, 2, 3.")
    problems.extend(_launcher_problems(hw))
    hostfile_ok = True
    if hw.distributed != "none" and hw.hostfile:
        try:
            world_size(cfg)
        except ConfigError as ex:
            problems.append(str(ex))
            hostfile_ok = False
    if hostfile_ok and train.global_batch_size is not None and min(train.micro_batch_size,
                                                                   train.grad_accum_steps) >= 1:
        actual = global_batch_size(cfg)
        if train.global_batch_size != actual:
            problems.append(
                f"'train.global_batch_size' is {train.global_batch_size} but train.micro_batch_size="
                f"{train.micro_batch_size} x train.grad_accum_steps={train.grad_accum_steps} x world size "
                f"{world_size(cfg)} (hardware.nproc_per_node x hardware.nnodes) = {actual}; change one of them so "
                "the product matches, or drop train.global_batch_size.")
    if ev.num_samples < 1:
        problems.append(f"'eval.num_samples' is {ev.num_samples}; it must be at least 1.")
    if ev.num_samples > 1 and ev.temperature == 0:
        problems.append(f"'eval.num_samples' is {ev.num_samples} with eval.temperature=0 (greedy): every sample "
                        "would be identical; set eval.temperature > 0 (e.g. 0.6).")
    if ev.repeats > 1 and ev.temperature == 0:
        problems.append(f"'eval.repeats' is {ev.repeats} with eval.temperature=0 (greedy): every repeat would be "
                        "identical; set eval.temperature > 0 (the long-CoT study: 0.6 with eval.top_p=0.95).")
    bad_k = [k for k in ev.pass_at_k if k < 1 or k > ev.num_samples]
    if bad_k:
        problems.append(f"'eval.pass_at_k' has {bad_k}, outside [1, eval.num_samples={ev.num_samples}]; lower k or "
                        "raise eval.num_samples.")
    if ev.temperature < 0 or not 0 < ev.top_p <= 1:
        problems.append(f"'eval.temperature'={ev.temperature} must be >= 0 and 'eval.top_p'={ev.top_p} in (0, 1].")
    for key in ("batch_size", "max_new_tokens", "repeats"):
        if ev[key] < 1:
            problems.append(f"'eval.{key}' is {ev[key]}; it must be at least 1.")
    if ev.max_samples is not None and ev.max_samples < 1:
        problems.append(f"'eval.max_samples' is {ev.max_samples}; give a positive number or null for all rows.")
    if cfg.data.max_samples is not None and cfg.data.max_samples < 1:
        problems.append(f"'data.max_samples' is {cfg.data.max_samples}; give a positive number or null.")

    model = cfg.model
    if model.build == "hub" and not (model.path or model.hub_id):
        problems.append(f"model '{model.name}' has neither 'model.path' nor 'model.hub_id'; set model.path to a "
                        "local checkpoint dir or model.hub_id to a hub id.")
    if model.build == "tiny" and not model.architecture:
        problems.append(f"model '{model.name}' has build=tiny but no 'model.architecture' fields to build it from.")
    if model.build == "tiny" and model.tokenizer not in (None, "builtin"):
        problems.append(f"'model.tokenizer' is '{model.tokenizer}' on a tiny model; tiny models use the builtin "
                        "tokenizer (model.tokenizer=builtin).")
    if model.path:
        from runner.models import check_local_dir

        try:
            check_local_dir(model.path, model.name, trust_remote_code=bool(model.trust_remote_code))
        except RunnerError as ex:
            problems.append(str(ex))
    if cfg.data.path is not None:
        from runner.data import check_path

        try:
            check_path(cfg.data)
        except RunnerError as ex:
            problems.append(str(ex))
    if problems:
        raise ConfigError(f"the config has {len(problems)} problem(s):", problems)


def _launcher_problems(hw: DictConfig) -> list[str]:
    """Checks of ``hardware.*`` that must hold before any process is launched."""
    problems = []
    if hw.zero_stage > 0 and hw.distributed != "deepspeed":
        problems.append(f"'hardware.zero_stage' is {hw.zero_stage} but 'hardware.distributed' is "
                        f"'{hw.distributed}'; ZeRO needs DeepSpeed: use hardware=deepspeed (or "
                        "hardware.distributed=deepspeed), or set hardware.zero_stage=0.")
    if hw.offload_optimizer and not (hw.distributed == "deepspeed" and hw.zero_stage >= 1):
        problems.append("'hardware.offload_optimizer' is true but it needs DeepSpeed ZeRO stage 1-3 "
                        f"(hardware.distributed={hw.distributed}, hardware.zero_stage={hw.zero_stage}).")
    if hw.offload_param and not (hw.distributed == "deepspeed" and hw.zero_stage == 3):
        problems.append("'hardware.offload_param' is true but it needs DeepSpeed ZeRO-3 (hardware.zero_stage=3; it "
                        f"is {hw.zero_stage}).")
    if hw.backend == "nccl" and hw.device != "cuda":
        problems.append(f"'hardware.backend' is nccl but 'hardware.device' is {hw.device}; nccl runs on GPUs only: "
                        "use hardware.backend=gloo (or auto) on the CPU.")
    if not 1 <= hw.master_port <= 65535:
        problems.append(f"'hardware.master_port' is {hw.master_port}; give a TCP port in [1, 65535].")
    if hw.distributed != "none" and hw.nnodes > 1 and not hw.hostfile and hw.master_addr in (
            "127.0.0.1", "localhost") and not os.environ.get("SLURM_JOB_ID"):
        problems.append(f"'hardware.nnodes' is {hw.nnodes} but 'hardware.master_addr' is {hw.master_addr}; every "
                        "node must reach rank 0: set hardware.master_addr to the host of hardware.node_rank=0 (or "
                        "give a hardware.hostfile, or run inside a SLURM allocation).")
    if hw.hostfile and hw.distributed == "none":
        problems.append("'hardware.hostfile' is set but 'hardware.distributed' is none; use hardware=deepspeed or "
                        "hardware=ddp.")
    return problems


def to_container(cfg: DictConfig | ListConfig) -> Any:
    """The resolved config as plain Python containers (no ``${...}`` left)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
