"""Config schemas of the SFT family's methods (pure dataclasses: no torch import).

Each schema is registered in Hydra's ConfigStore as ``schema/method/<name>`` via :mod:`runner.registry`; its
``check`` runs before any model or data is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig

from runner.config import MethodConfig

FFN_MODULES = ("gate_proj", "up_proj", "down_proj")
"""The FFN sub-layers of LLaMA/Qwen2/Mistral decoder layers (``model.layers.{i}.mlp.<name>``)."""
SLAM_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
"""Architectures whose decoder layers name their FFN sub-layers as in :data:`FFN_MODULES`."""


@dataclass
class SFTMethodConfig(MethodConfig):
    """Full fine-tuning: every parameter trains; loss on completion tokens only."""


@dataclass
class LoraMethodConfig(MethodConfig):
    """LoRA adapters (peft) on ``target_modules``; the base model stays frozen."""

    lora_r: int = 8
    """Rank of the adapter matrices."""
    lora_alpha: float = 16.0
    """Scaling numerator: updates are scaled by lora_alpha / lora_r."""
    lora_dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names (suffixes) that receive adapters."""

    @classmethod
    def check(cls, cfg: DictConfig) -> list[str]:
        m = cfg.method
        problems = []
        if m.lora_r < 1:
            problems.append(f"'method.lora_r' is {m.lora_r}; it must be at least 1.")
        if m.lora_alpha <= 0:
            problems.append(f"'method.lora_alpha' is {m.lora_alpha}; it must be positive.")
        if not 0 <= m.lora_dropout < 1:
            problems.append(f"'method.lora_dropout' is {m.lora_dropout}; it must lie in [0, 1).")
        if not m.target_modules:
            problems.append("'method.target_modules' is empty; name at least one module, e.g. [q_proj, v_proj].")
        return problems


@dataclass
class SlamMethodConfig(MethodConfig):
    """SLAM (Fan et al., COLING 2025): train only the FFN sub-layers ``modules`` of the layers ``layers``.

    Everything else (attention, embeddings, norms, ``lm_head``, ``gate_proj``) is frozen. See
    ``recipes/sft/slam.py`` for the selection and the layer analysis behind ``layers=auto``.
    """

    layers: Any = field(default_factory=lambda: [0, 1, 2, 3, 4, 5])
    """0-indexed decoder layers to tune, or ``auto`` to pick them with the layer analysis."""
    modules: list[str] = field(default_factory=lambda: ["up_proj", "down_proj"])
    """FFN sub-layers tuned in each chosen layer (the paper's ``--only_mlp``: up and down, not gate)."""
    auto_num_layers: int = 6
    """With ``layers=auto``: how many layers to pick."""
    analysis_samples: int = 16
    """With ``layers=auto``: rows per language fed through the model for the analysis."""
    analysis_languages: list[str] = field(default_factory=list)
    """With ``layers=auto``: languages of the analysis sample (empty: every language of the data)."""

    @classmethod
    def check(cls, cfg: DictConfig) -> list[str]:
        m, arch = cfg.method, cfg.model.architecture
        problems = []
        bad = [x for x in m.modules if x not in FFN_MODULES]
        if bad or not m.modules:
            problems.append(f"'method.modules' is {list(m.modules)}; SLAM tunes FFN sub-layers only, a non-empty "
                            f"subset of {list(FFN_MODULES)}.")
        model_type = arch.get("model_type") if arch else None
        if model_type is not None and model_type not in SLAM_MODEL_TYPES:
            problems.append(f"model '{cfg.model.name}' is a '{model_type}' model; SLAM needs decoder layers with "
                            f"mlp.{{gate,up,down}}_proj ({', '.join(SLAM_MODEL_TYPES)}).")
        n_layers = arch.get("num_hidden_layers") if arch else None
        if isinstance(m.layers, str):
            if m.layers != "auto":
                problems.append(f"'method.layers' is '{m.layers}'; give a list of layer indices like [0,1,2] or "
                                "'auto'.")
            elif n_layers is not None and not 1 <= m.auto_num_layers <= n_layers:
                problems.append(f"'method.auto_num_layers' is {m.auto_num_layers}; it must lie in [1, {n_layers}] "
                                f"for model '{cfg.model.name}'.")
        elif isinstance(m.layers, (list, tuple, ListConfig)):
            layers = list(m.layers)
            if not layers or not all(isinstance(x, int) for x in layers):
                problems.append(f"'method.layers' is {layers}; give a non-empty list of integer layer indices.")
            elif len(set(layers)) != len(layers):
                problems.append(f"'method.layers' {layers} repeats a layer.")
            elif n_layers is not None and any(not 0 <= x < n_layers for x in layers):
                problems.append(f"'method.layers' {layers} names layers outside [0, {n_layers - 1}] of model "
                                f"'{cfg.model.name}' ({n_layers} layers).")
        else:
            problems.append(f"'method.layers' is {m.layers!r}; give a list of layer indices or 'auto'.")
        return problems


# --------------------------------------------------------------------------------------------------------------------
# OXA
# --------------------------------------------------------------------------------------------------------------------

OXA_STAGES = ("score", "promote", "suppress", "train", "all")


@dataclass
class OxaPromoteConfig:
    """OXA's promote set (``make_OXA_MLE_data.py``): verified teacher responses whose PPL under the base model
    follows a truncated Gaussian over PPL bins."""

    size: int = 50000
    """Target size of the promote set (the paper: 50k)."""
    mu: float = 2.5
    """Mean of the Gaussian over PPL (the paper: 2.5 for Qwen2.5-Math-1.5B, 3.0 for 7B)."""
    sigma: float = 0.25
    """Standard deviation of the Gaussian over PPL."""
    ppl_min: float = 1.0
    """Lower end of the PPL range; responses below it are never selected."""
    ppl_max: float = 5.0
    """Upper end of the PPL range; responses above it are never selected."""
    bin_width: float = 0.05
    """Width of a PPL bin."""
    per_query: int = 1
    """At most this many responses per prompt (the final OXA sets use 1)."""


@dataclass
class OxaSuppressConfig:
    """OXA's suppress set (``make_ULloss_data.py``): the model's own incorrect samples, the most confident kept."""

    size: int = 50000
    """k: the lowest-PPL incorrect samples kept (the paper: 50k)."""
    num_generations: int = 8
    """Samples drawn per training prompt to find incorrect ones. [INF: not stated in the OXA code]"""
    temperature: float = 0.6
    """Sampling temperature of the self-generated samples. [INF: OXA's evaluation setting]"""
    top_p: float = 0.95
    """Nucleus threshold of the self-generated samples. [INF: OXA's evaluation setting]"""
    max_new_tokens: int = 2048
    """Generation budget per sample."""
    min_ppl: float = 1.2
    """Samples with PPL below this are dropped (near-deterministic text such as repetition loops)."""
    max_tokens: Optional[int] = 25000
    """Samples longer than this many tokens are dropped (the paper: 25k); null keeps all."""
    per_query: int = 1
    """At most this many samples per prompt (the paper: 1)."""


@dataclass
class OxaMethodConfig(MethodConfig):
    """OXA (Mu et al., arXiv 2603.16206): promote low-confidence correct teacher responses (CE), suppress the model's
    confident wrong ones (unlikelihood). A pipeline of stages, each writing its artifact under ``<run dir>/oxa/``:
    ``score`` (PPL of every teacher response), ``promote`` (the truncated-Gaussian selection), ``suppress`` (sample,
    verify with math-verify, filter), ``train`` (CE + ``ul_weight`` x UL); ``all`` runs them in order. See
    ``recipes/sft/oxa.py`` and ``recipes/sft/oxa_recipe.py``."""

    stage: str = "all"
    """``score``, ``promote``, ``suppress``, ``train`` or ``all``."""
    from_runs: list[str] = field(default_factory=list)
    """Run dirs of earlier stages whose ``oxa/*.jsonl`` artifacts this run reads (searched in order, after this run's
    own dir)."""
    ul_weight: float = 1e-4
    """lambda, the weight of the unlikelihood term."""
    ul_per_global_batch: int = 2
    """Suppress rows in every global batch (micro_batch_size x grad_accum_steps x world size); 0 trains the promote
    set alone (OXA_MLE). The paper: 128 of 256 (128 CE + 128 UL per step; experiment=oxa-qwen2.5-math-1.5b)."""
    ppl_batch_size: int = 8
    """Sequences per forward pass when scoring PPL."""
    promote: OxaPromoteConfig = field(default_factory=OxaPromoteConfig)
    """The promote-set selection."""
    suppress: OxaSuppressConfig = field(default_factory=OxaSuppressConfig)
    """The suppress-set sampling and filter."""

    @classmethod
    def check(cls, cfg: DictConfig) -> list[str]:
        from runner.config import global_batch_size

        m = cfg.method
        p, s = m.promote, m.suppress
        problems = []
        if m.stage not in OXA_STAGES:
            problems.append(f"'method.stage' is '{m.stage}'; valid stages: {', '.join(OXA_STAGES)}.")
        if p.size < 1 or p.per_query < 1:
            problems.append(f"'method.promote.size' ({p.size}) and 'method.promote.per_query' ({p.per_query}) must be "
                            "at least 1.")
        if p.sigma <= 0 or p.bin_width <= 0 or p.ppl_max <= p.ppl_min or p.bin_width > p.ppl_max - p.ppl_min:
            problems.append(f"the promote bins need method.promote.sigma > 0 (got {p.sigma}), ppl_max > ppl_min (got "
                            f"[{p.ppl_min}, {p.ppl_max}]) and 0 < bin_width <= ppl_max - ppl_min (got "
                            f"{p.bin_width}).")
        elif not p.ppl_min - 10 * p.sigma <= p.mu <= p.ppl_max + 10 * p.sigma:
            problems.append(f"'method.promote.mu' is {p.mu}, more than 10 sigma outside [{p.ppl_min}, {p.ppl_max}]: "
                            "the Gaussian would be zero on every bin; move mu into the PPL range.")
        if s.size < 0 or s.num_generations < 1 or s.per_query < 1 or s.max_new_tokens < 1:
            problems.append(f"'method.suppress' needs size >= 0 (got {s.size}), num_generations >= 1 (got "
                            f"{s.num_generations}), per_query >= 1 (got {s.per_query}) and max_new_tokens >= 1 (got "
                            f"{s.max_new_tokens}).")
        if s.temperature <= 0 or not 0 < s.top_p <= 1:
            problems.append(f"'method.suppress.temperature' ({s.temperature}) must be > 0 (the samples are drawn) and "
                            f"'method.suppress.top_p' ({s.top_p}) in (0, 1].")
        if s.max_tokens is not None and s.max_tokens < 1:
            problems.append(f"'method.suppress.max_tokens' is {s.max_tokens}; give a positive cap or null.")
        if m.ul_weight < 0:
            problems.append(f"'method.ul_weight' is {m.ul_weight}; it must be >= 0.")
        if m.ppl_batch_size < 1:
            problems.append(f"'method.ppl_batch_size' is {m.ppl_batch_size}; it must be at least 1.")
        if min(cfg.train.micro_batch_size, cfg.train.grad_accum_steps) >= 1:
            g = global_batch_size(cfg)
            if not 0 <= m.ul_per_global_batch < g:
                problems.append(f"'method.ul_per_global_batch' is {m.ul_per_global_batch} but a global batch holds "
                                f"{g} rows (train.micro_batch_size x train.grad_accum_steps x world size); it must "
                                f"lie in [0, {g - 1}] so each batch keeps a promote row. Raise the batch or lower "
                                "method.ul_per_global_batch.")
        if m.stage in ("score", "suppress", "all") and cfg.data.train_split is None:
            problems.append(f"method.stage={m.stage} reads the training prompts and responses, but data="
                            f"{cfg.data.name} has no train split (data.train_split is null); use data with one "
                            "(e.g. gsm8k).")
        return problems


# --------------------------------------------------------------------------------------------------------------------
# GRAM
# --------------------------------------------------------------------------------------------------------------------

GRAM_STAGES = ("1", "2", "all")
GRAM_PRETRAIN_PROMPT = "[User Question]\n{prompt}\n\n"
"""Stage 1 input (GRAM README, pre-training data): the user question."""
GRAM_PRETRAIN_OUTPUT = ("[The Start of Assistant A's Answer]\n{response_a}\n[The End of Assistant A's Answer]\n\n"
                        "[The Start of Assistant B's Answer]\n{response_b}\n[The End of Assistant B's Answer]")
"""Stage 1 output (GRAM README): both responses; the loss covers this span only."""
GRAM_JUDGE_TEMPLATE = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the "
    "user question displayed below. You should choose the assistant that follows the user's instructions and answers "
    "the user's question better.\n"
    "Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and "
    "level of detail of their responses. Avoid any position biases and ensure that the order in which the responses "
    "were presented does not influence your decision. Do not allow the length of the responses to influence your "
    "evaluation. Do not favor certain names of the assistants. Be as objective as possible.\n"
    "Please directly output your final verdict by strictly following this format: \"A\" if assistant A is better, "
    "\"B\" if assistant B is better.\n\n"
    "[User Question]\n{prompt}\n\n"
    "[The Start of Assistant A's Answer]\n{response_a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{response_b}\n[The End of Assistant B's Answer]\n\n"
    "#Preferred: ")
"""Stage 2 and readout prompt (GRAM ``evaluation/gram_eval.py``; the README's fine-tuning prompt without the trailing
space). The answer token (``A`` or ``B``) follows it."""


@dataclass
class GramMethodConfig(MethodConfig):
    """GRAM (Wang et al., ICML 2025): a generative reward model. Stage 1 learns to generate both responses of a pair
    (no labels); stage 2 learns the preferred label token (``A``/``B``) with label-smoothed cross-entropy over the two
    label tokens; the reward reads both orders out and averages. See ``recipes/sft/gram.py``."""

    stage: str = "all"
    """``1`` (pre-training on pairs without labels), ``2`` (label-smoothed fine-tuning) or ``all`` (1 then 2)."""
    init_from: Optional[str] = None
    """Stage 2 alone: start from this stage-1 run dir (its latest ``checkpoints/stage1/step-N``) or checkpoint dir;
    null starts from ``model``."""
    label_smoothing: float = 0.1
    """epsilon of the two-class label-smoothed cross-entropy (the README recommends 0.05, 0.1 or 0.15)."""
    pair_order: str = "both"
    """How a pair is laid out as (A, B): ``both`` (each pair in both orders, labels balanced) or ``random`` (one
    seeded random order per pair). [INF: the released data already carries its own orders.]"""
    judge_template: str = GRAM_JUDGE_TEMPLATE
    """Stage 2 / readout prompt; fields ``{prompt}``, ``{response_a}``, ``{response_b}``."""
    pretrain_prompt_template: str = GRAM_PRETRAIN_PROMPT
    """Stage 1 input; field ``{prompt}``."""
    pretrain_output_template: str = GRAM_PRETRAIN_OUTPUT
    """Stage 1 output; fields ``{response_a}``, ``{response_b}``."""

    @classmethod
    def check(cls, cfg: DictConfig) -> list[str]:
        m = cfg.method
        problems = []
        if str(m.stage) not in GRAM_STAGES:
            problems.append(f"'method.stage' is '{m.stage}'; valid stages: {', '.join(GRAM_STAGES)}.")
        if not 0 <= m.label_smoothing < 1:
            problems.append(f"'method.label_smoothing' is {m.label_smoothing}; it must lie in [0, 1).")
        if m.pair_order not in ("both", "random"):
            problems.append(f"'method.pair_order' is '{m.pair_order}'; valid values: both, random.")
        for key, fields in (("judge_template", ("prompt", "response_a", "response_b")),
                            ("pretrain_prompt_template", ("prompt",)),
                            ("pretrain_output_template", ("response_a", "response_b"))):
            missing = [f for f in fields if "{" + f + "}" not in m[key]]
            if missing:
                problems.append(f"'method.{key}' lacks the field(s) {', '.join('{' + f + '}' for f in missing)}.")
        if m.init_from is not None and str(m.stage) != "2":
            problems.append(f"'method.init_from' is set but method.stage={m.stage}; it only applies to stage 2 run "
                            "alone (stage all passes stage 1's weights on by itself).")
        return problems
