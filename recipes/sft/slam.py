"""SLAM: selective language alignment (Fan et al., "SLAM: Towards Efficient Multilingual Reasoning via Selective
Language Alignment", COLING 2025; code github.com/fmm170/SLAM).

Two pieces, both pure functions of a model or of tensors:

* :func:`apply_slam` freezes every parameter except the FFN sub-layers ``modules`` (default ``up_proj`` and
  ``down_proj``, not ``gate_proj``: the code's ``--only_mlp``) of the decoder layers ``layers`` (default 0-5, which
  reproduces the abstract's 6.5-8% share: 541,065,216 of 6,738,415,616 on LLaMA-2-7B). Attention, embeddings, norms
  and ``lm_head`` stay frozen. The released 7B script tunes layers 0-4; the paper's 6 layers are the default here.
* :func:`layer_statistics` is the layer analysis behind ``method.layers=auto``. The paper counts activated FFN neurons
  per language and layer and ranks layers by the mean squared deviation (MSD) across languages; its exact threshold and
  formula were not available (METHODS.md, Part A 1), so this module uses the definition below and records it.

Definition used for ``layers=auto`` (documented, pluggable):

* A neuron j of layer l is *active on a token* when its gate activation ``act_fn(gate_proj(x))_j`` is > 0 (for
  SiLU, when the gate pre-activation is positive), following the language-specific-neuron literature.
* ``rate[l, g, j]`` = the fraction of language g's real (non-pad) tokens on which neuron j of layer l is active.
* ``msd[l] = mean_j mean_g (rate[l, g, j] - mean_g' rate[l, g', j])^2``: how much neuron usage in layer l differs
  between languages (high = language-specific).
* ``activated[l, g]`` = the number of neurons with ``rate[l, g, j] > 0.5`` and ``overlap_en[l, g]`` = the share of
  English's activated neurons also activated for g (reported, as in the paper's analysis, not used for the choice).
* The chosen layers are the ``auto_num_layers`` layers with the highest ``msd``, in increasing order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from runner.errors import ConfigError

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.(\w+)\.(weight|bias)$")


def slam_parameter_names(model: torch.nn.Module, layers: Iterable[int], modules: Iterable[str]) -> list[str]:
    """Names of the parameters SLAM trains: ``...layers.{l}.mlp.{m}.{weight,bias}`` for l in layers, m in modules."""
    layers, modules = set(layers), set(modules)
    names = []
    for name, _ in model.named_parameters():
        m = _LAYER.search(name)
        if m and int(m.group(1)) in layers and m.group(2) in modules:
            names.append(name)
    return names


def apply_slam(model: torch.nn.Module, layers: Sequence[int], modules: Sequence[str]) -> list[str]:
    """Freeze everything, then unfreeze SLAM's FFN sub-layers; returns the trainable parameter names.

    Raises:
        ConfigError: no parameter matches (the model has no ``layers.{l}.mlp.{module}``), or a listed layer or module
            matched nothing.
    """
    names = slam_parameter_names(model, layers, modules)
    found_layers = {int(_LAYER.search(n).group(1)) for n in names}
    found_modules = {_LAYER.search(n).group(2) for n in names}
    missing_layers = sorted(set(layers) - found_layers)
    missing_modules = sorted(set(modules) - found_modules)
    if not names or missing_layers or missing_modules:
        raise ConfigError(f"SLAM found no FFN parameters for method.layers={list(layers)} (missing layers "
                          f"{missing_layers}) and method.modules={list(modules)} (missing {missing_modules}) in "
                          f"{type(model).__name__}; layers must exist in the model and modules be FFN sub-layers "
                          "named layers.<i>.mlp.<module>.")
    chosen = set(names)
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    return names


def slam_trainable_count(num_layers_tuned: int, hidden_size: int, intermediate_size: int,
                         modules: Sequence[str]) -> int:
    """Closed form of SLAM's trainable parameters for bias-free FFNs: ``len(layers) x len(modules) x d x d_ff``."""
    return num_layers_tuned * len(modules) * hidden_size * intermediate_size


# --------------------------------------------------------------------------------------------------------------------
# Layer analysis (method.layers=auto)
# --------------------------------------------------------------------------------------------------------------------


def layer_statistics(rates: torch.Tensor, languages: Sequence[str], threshold: float = 0.5) -> dict[str, Any]:
    """Per-layer language-specificity from activation rates (see the module docstring for the definitions).

    Args:
        rates: ``[L, G, I]`` float tensor, ``rates[l, g, j]`` in [0, 1]: fraction of language g's tokens on which
            neuron j of layer l is active.
        languages: the G language codes, in the order of dim 1.
        threshold: rate above which a neuron counts as activated for a language.

    Returns:
        ``{"msd": [L], "activated": {lang: [L]}, "overlap_en": {lang: [L]} (when "en" is present)}``.

    Raises:
        ValueError: ``rates`` is not 3-D or ``languages`` does not match its dim 1.
    """
    if rates.dim() != 3 or rates.shape[1] != len(languages):
        raise ValueError(f"rates must be [layers, {len(languages)} languages, neurons]; got {tuple(rates.shape)}")
    mean = rates.mean(dim=1, keepdim=True)
    msd = ((rates - mean) ** 2).mean(dim=1).mean(dim=1)
    active = rates > threshold
    out: dict[str, Any] = {"msd": msd.tolist(),
                           "activated": {g: active[:, i].sum(dim=1).tolist() for i, g in enumerate(languages)}}
    if "en" in languages:
        en = active[:, list(languages).index("en")]
        denom = en.sum(dim=1).clamp(min=1)
        out["overlap_en"] = {g: ((active[:, i] & en).sum(dim=1) / denom).tolist() for i, g in enumerate(languages)}
    return out


def choose_layers(msd: Sequence[float], k: int) -> list[int]:
    """The ``k`` layers with the highest MSD, in increasing layer order (ties: the lower layer first)."""
    ranked = sorted(range(len(msd)), key=lambda i: (-msd[i], i))
    return sorted(ranked[:k])


@torch.no_grad()
def activation_rates(model: torch.nn.Module, batches: Mapping[str, Sequence[Sequence[int]]],
                     pad_token_id: int) -> torch.Tensor:
    """``[L, G, I]`` activation rates measured by hooking every layer's ``mlp.act_fn``.

    Args:
        model: a LLaMA/Qwen2-style causal LM (``model.model.layers[i].mlp.act_fn``).
        batches: language -> token id sequences of that language's sample (G languages, in mapping order).
        pad_token_id: id used to right-pad sequences (padded positions are not counted).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = base.model.layers
    counts: list[torch.Tensor] = []
    current: dict[str, Any] = {}

    def hook(idx):
        def fn(_module, _inp, out):
            mask = current["mask"]
            active = (out > 0).float() * mask.unsqueeze(-1)
            current["acc"][idx] += active.sum(dim=(0, 1)).double().cpu()
        return fn

    handles = [layer.mlp.act_fn.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for seqs in batches.values():
            n_inter = layers[0].mlp.up_proj.out_features
            current["acc"] = [torch.zeros(n_inter, dtype=torch.float64) for _ in layers]
            tokens = 0
            for start in range(0, len(seqs), 8):
                chunk = seqs[start: start + 8]
                width = max(len(s) for s in chunk)
                ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width))
                for i, s in enumerate(chunk):
                    ids[i, : len(s)] = torch.tensor(s)
                    mask[i, : len(s)] = 1
                current["mask"] = mask.to(device)
                model(input_ids=ids.to(device), attention_mask=mask.long().to(device))
                tokens += int(mask.sum())
            counts.append(torch.stack(current["acc"]) / max(tokens, 1))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return torch.stack(counts, dim=1).float()
