"""Config schemas of the SFT family's methods (pure dataclasses: no torch import).

Each schema is registered in Hydra's ConfigStore as ``schema/method/<name>`` via :mod:`runner.registry`; its
``check`` runs before any model or data is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
