"""Config schemas of the probing family's methods (pure dataclasses: no torch import).

``mrmbench``: linear probes on a frozen backbone's preference representations over the MRMBench dimensions, with
inference-time probing (ITP). ``lrhp``: a preference-pair encoder and its two downstream tasks (preference data
selection, preference margin prediction). General training knobs (``lr``, betas, weight decay, schedule, batch size,
epochs, ``max_seq_len``) live under ``train.*``; the feature-extraction batch is ``eval.batch_size``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import DictConfig

from runner.config import MethodConfig
from runner.pairs import HH_SUBSETS, PAIR_FORMATS

MRMBENCH_DIMENSIONS = ("harmlessness", "helpfulness", "correctness", "coherence", "complexity", "verbosity")
"""The six MRMBench dimensions, named as the directories of ``data/mrm_{easy,hard}/``."""
HH_PROBE_TASKS = ("helpful_vs_harmless", "harmlessness", "helpfulness")
"""Probing tasks derived from HH-RLHF (``data=hh-probe``, see :mod:`recipes.probing.data`)."""
LEVEL_CLASSES = {"easy": 2, "hard": 3}
"""MRMBench-Easy probes 2 classes (BCE on one logit), MRMBench-Hard 3 (cross-entropy)."""
POOLINGS = ("last_token", "mean", "cls")
"""How a sequence becomes one vector: the last real token's final hidden state (MRMBench's rule, for decoders), the
mean over real tokens (how sentence encoders such as all-MiniLM-L6-v2 were trained), or the first token ([CLS])."""
PROBE_FORMATS = ("mrmbench", "hh_probe")
LRHP_ENCODERS = ("concat", "difference")
LRHP_PROJECTIONS = ("mlp", "none")
LRHP_STAGES = ("pds", "pmp")
PDS_SELECTIONS = ("centroid",)
MARGIN_SOURCES = ("data", "reward_model")


def data_format_problem(cfg: DictConfig) -> str | None:
    """Whether ``data`` fits the probing method (checked by the plan, so that every method option validates with the
    default data config; a dry-run or a run stops on it before any model or data is loaded)."""
    m = cfg.method
    formats, hint = {"mrmbench": (PROBE_FORMATS, "data=mrmbench (data.path=<MRMBench data dir>) or data=hh-probe"),
                     "lrhp": (PAIR_FORMATS, "data=hh_rlhf (data.path=<dir of HH-RLHF files>) or data=pairs-jsonl "
                                            "(data.path=<file.jsonl>)")}[m.name]
    if cfg.data.format in formats:
        return None
    return (f"method={m.name} reads data formats {', '.join(formats)} but data={cfg.data.name} has format "
            f"'{cfg.data.format}'; use {hint}.")


def _common_checks(cfg: DictConfig) -> list[str]:
    m, problems = cfg.method, []
    if m.pooling not in POOLINGS:
        problems.append(f"'method.pooling' is '{m.pooling}'; valid values: {', '.join(POOLINGS)}.")
    if cfg.hardware.distributed != "none":
        problems.append(f"method={m.name} runs in one process (a frozen backbone's features are extracted once and "
                        f"small heads trained on them); set hardware.distributed=none (hardware=cpu or gpu).")
    if cfg.train.max_steps == 0:
        problems.append(f"method={m.name} trains its heads on the extracted features; train.max_steps=0 would "
                        "evaluate untrained heads. Use -1 (train.epochs) or a positive step count.")
    return problems


@dataclass
class MRMBenchMethodConfig(MethodConfig):
    """MRMBench (Wang et al., AAAI 2026): probe a frozen backbone's final hidden states with a bias-free linear head
    per preference dimension; plus inference-time probing (distances to per-label centroids, discard beyond d_tau).

    The paper's optimizer setting (AdamW betas (0.9, 0.95), lr 5e-5, weight decay 0.1, cosine, no warm-up, 1 epoch,
    batch 128, max_seq_len 2048, seed 42 Easy / 1234 Hard) is ``experiment=mrmbench-easy`` / ``mrmbench-hard``.
    """

    level: str = "easy"
    """``easy``: 2 classes, head (d, 1) with BCE, predict sigmoid > 0.5. ``hard``: 3 classes, head (d, 3) with
    cross-entropy, predict argmax. Selects ``data/mrm_<level>/`` for MRMBench data."""
    pooling: str = "last_token"
    """``last_token`` (the paper's rule: the final hidden state at the last real token of a right-padded batch),
    ``mean`` or ``cls``; see :data:`POOLINGS`."""
    append_eos: bool = True
    """Append the tokenizer's EOS to every text that does not already end with it (the paper sets
    ``add_eos_token=True`` for LLaMA tokenizers, so the probed token is EOS). No effect on tokenizers without an EOS
    token (BERT ends every text with [SEP] instead)."""
    itp: bool = True
    """Run inference-time probing on the test samples."""
    itp_clusters: int = 1
    """k-means clusters per (dimension, label); 1 means class means (the simplest reading of the paper)."""
    d_tau: Optional[float] = 140.0
    """ITP threshold: a sample whose distance to its nearest centroid exceeds d_tau is discarded (the paper used 140
    with LLaMA-scale hidden states; the scale depends on the backbone). null keeps every sample."""

    @classmethod
    def check(cls, cfg: DictConfig) -> list[str]:
        m, d = cfg.method, cfg.data
        problems = _common_checks(cfg)
        if m.level not in LEVEL_CLASSES:
            problems.append(f"'method.level' is '{m.level}'; valid values: {', '.join(LEVEL_CLASSES)}.")
        if m.itp_clusters < 1:
            problems.append(f"'method.itp_clusters' is {m.itp_clusters}; it must be at least 1.")
        if m.d_tau is not None and m.d_tau < 0:
            problems.append(f"'method.d_tau' is {m.d_tau}; give a non-negative distance or null (keep everything).")
        valid = {"mrmbench": MRMBENCH_DIMENSIONS, "hh_probe": HH_PROBE_TASKS}.get(d.format)
        if valid is not None and d.subsets is not None:
            bad = [x for x in d.subsets if x not in valid]
            if bad or not d.subsets:
                problems.append(f"'data.subsets' has {bad or 'nothing'}; data={d.name} has the dimensions "
                                f"{', '.join(valid)}.")
        if d.format == "hh_probe" and m.level != "easy":
            problems.append("data=hh-probe has binary labels only; use method.level=easy.")
        return problems


@dataclass
class LRHPMethodConfig(MethodConfig):
    """LRHP (Wang et al., arXiv 2410.04503): a representation per preference pair (prompt, chosen, rejected), trained
    on both orders of every pair, used for preference data selection (PDS) and preference margin prediction (PMP).

    The paper's body and code were not available: this design is a proposal (METHODS.md Part B section 2, [INF]),
    kept pluggable: ``encoder`` (how a pair becomes a vector), ``selection`` (how PDS ranks the pool) and
    ``margin_source`` (where PMP's gold margins come from) each name one of several implementations.
    """

    encoder: str = "concat"
    """``concat``: z = g(h(x + "Response A:" y_a + "Response B:" y_b)), one text per ordered pair, with a linear head
    for p(A preferred). ``difference``: z = g(h(x + y_a)) - g(h(x + y_b)) with a bias-free head, antisymmetric by
    construction (a Bradley-Terry reward model's view). h is the frozen backbone's pooled state, g a trained MLP."""
    pair_template: str = "{prompt}\n\nResponse A: {a}\n\nResponse B: {b}"
    """The ``concat`` encoder's text of an ordered pair; fields ``{prompt}``, ``{a}``, ``{b}``."""
    pooling: str = "last_token"
    """How the backbone's states become h; see :data:`POOLINGS`."""
    append_eos: bool = True
    """Append the tokenizer's EOS (as in MRMBench) where the tokenizer has one."""
    projection: str = "mlp"
    """g: ``mlp`` (Linear-GELU-Linear to ``rep_dim``: a representation learnt on the preference task) or ``none``
    (the identity: z is the frozen backbone's pooled state, only the preference head trains)."""
    rep_dim: int = 128
    """Width of the pair representation z (the output of g) with ``projection=mlp``."""
    stages: list[str] = field(default_factory=lambda: ["pds", "pmp"])
    """Downstream tasks to run after training the encoder: ``pds`` and/or ``pmp``."""
    target_subset: str = "harmless-base"
    """PDS: the subset (``PreferencePair.subset``, e.g. an HH-RLHF subset) that carries the target preference."""
    seed_size: int = 16
    """PDS: target pairs given as the seed set (they never enter the pool)."""
    target_test_size: int = 64
    """Target pairs held out to evaluate the reward models (and the encoder's pair accuracy)."""
    select_size: int = 32
    """PDS: pairs selected from the pool; the random baseline draws as many."""
    selection: str = "centroid"
    """PDS ranking: ``centroid`` = cosine similarity of z to the seed set's mean z."""
    margin_source: str = "reward_model"
    """PMP gold margins: ``data`` (a ``margin`` field in a pairs JSONL, e.g. score differences) or
    ``reward_model`` (r(x, chosen) - r(x, rejected) of a Bradley-Terry reward model trained on the pool's training
    part; a proxy for data without scores, such as HH-RLHF)."""
    pmp_test_fraction: float = 0.25
    """PMP: share of the pool held out to measure the Spearman correlation of predicted with gold margins."""
    margin_hidden: int = 64
    """PMP: hidden width of the margin regression MLP."""

    @classmethod
    def check(cls, cfg: DictConfig) -> list[str]:
        m, d = cfg.method, cfg.data
        problems = _common_checks(cfg)
        for key, valid in (("encoder", LRHP_ENCODERS), ("projection", LRHP_PROJECTIONS), ("selection", PDS_SELECTIONS),
                           ("margin_source", MARGIN_SOURCES)):
            if m[key] not in valid:
                problems.append(f"'method.{key}' is '{m[key]}'; valid values: {', '.join(valid)}.")
        bad = [s for s in m.stages if s not in LRHP_STAGES]
        if bad:
            problems.append(f"'method.stages' has {bad}; valid stages: {', '.join(LRHP_STAGES)}.")
        for key in ("rep_dim", "seed_size", "target_test_size", "select_size", "margin_hidden"):
            if m[key] < 1:
                problems.append(f"'method.{key}' is {m[key]}; it must be at least 1.")
        if not 0 < m.pmp_test_fraction < 1:
            problems.append(f"'method.pmp_test_fraction' is {m.pmp_test_fraction}; it must lie in (0, 1).")
        for name in ("{prompt}", "{a}", "{b}"):
            if name not in m.pair_template:
                problems.append(f"'method.pair_template' lacks the field {name}; it needs {{prompt}}, {{a}} and {{b}}.")
        if m.margin_source == "data" and d.format == "hh_rlhf" and "pmp" in m.stages:
            problems.append("method.margin_source=data needs pairs with a 'margin' field (data=pairs-jsonl); HH-RLHF "
                            "has none: use method.margin_source=reward_model.")
        if d.format == "hh_rlhf" and d.subsets is not None:
            bad = [s for s in d.subsets if s not in HH_SUBSETS]
            if bad:
                problems.append(f"'data.subsets' has {bad}; HH-RLHF subsets are {', '.join(HH_SUBSETS)}.")
            elif "pds" in m.stages and m.target_subset not in d.subsets:
                problems.append(f"'method.target_subset' is '{m.target_subset}', which is not among data.subsets "
                                f"{list(d.subsets)}.")
        return problems
