"""Padding-free batching: a micro-batch becomes one ``[1, total_tokens]`` row, and attention runs per sequence.

Right-padding a batch of variable-length rows spends compute on pad tokens: on GSM8K with batch 8 in random order,
about 1.6 tokens are processed for every real one. Flattening the batch removes the padding; what keeps the rows
apart is the attention, which must not look across a row boundary. Dense SDPA with a block-diagonal mask would be
exact but costs ``O(total_tokens^2)`` (a trap on CPU, see DESIGN.md). :func:`varlen_sdpa_attention` instead runs
``torch.nn.functional.scaled_dot_product_attention`` once per sequence, causal, on its own slice, the way
FlashAttention's varlen kernel does in one call: linear layers see only real tokens, attention costs
``sum(len_i^2)``.

Batches come from ``transformers.DataCollatorWithFlattening`` (positions restart at 0 for every row, the first label
of each row is -100, ``cu_seq_lens_q`` marks the boundaries); the Trainer passes those keys to the model, whose
attention layers receive them as keyword arguments. Losses are the same as with padding (same tokens, same labels,
same ``num_items_in_batch``) up to floating-point summation order.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.nn import functional as F  # noqa: N812

ATTN_IMPLEMENTATION = "runner_varlen_sdpa"
"""Name under which :func:`varlen_sdpa_attention` is registered in ``transformers.AttentionInterface``."""


def varlen_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Causal attention computed separately for each sequence of a flattened batch.

    Args:
        module: the attention layer (its ``num_key_value_groups`` says how many query heads share a key head).
        query: ``[1, H, T, D]``, the batch's sequences one after another along ``T``.
        key, value: ``[1, H_kv, T, D]``.
        attention_mask: unused on the flattened path (there is no padding); used as is when the call has no
            ``cu_seq_lens_q``, e.g. generation, which goes to transformers' own SDPA attention.
        dropout: attention dropout probability (0 in evaluation).
        scaling: softmax scale (``None``: ``1/sqrt(D)``).
        kwargs: ``cu_seq_lens_q``: ``[n + 1]`` int offsets of the ``n`` sequences in ``T`` (from
            ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)``).

    Returns:
        ``([1, T, H, D]`` attention output, ``None``): the layout transformers' attention interface expects.

    Raises:
        ValueError: ``cu_seq_lens_q`` with a batch dimension other than 1, or offsets that do not end at ``T``; a
            sequence longer than the layer's ``sliding_window`` (this path attends to the whole prefix).
    """
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    bounds = [int(x) for x in cu.tolist()]
    if query.shape[0] != 1 or bounds[-1] != query.shape[2]:
        raise ValueError(f"padding-free attention needs one flattened row whose length ({query.shape[2]} tokens, "
                         f"batch dim {query.shape[0]}) is cu_seq_lens_q's last offset ({bounds[-1]}).")
    window = kwargs.get("sliding_window")
    longest = max(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    if window is not None and longest > window:
        raise ValueError(f"padding-free attention is full causal within each sequence, but this layer has a sliding "
                         f"window of {window} tokens and a row of {longest}; set train.padding_free=false.")
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    p = dropout if module.training else 0.0
    out = [F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=p,
                                          is_causal=True, scale=scaling)
           for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return torch.cat(out, dim=2).transpose(1, 2).contiguous(), None


def _mask(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """No mask for flattened batches (they carry no ``attention_mask``); SDPA's mask otherwise (generation)."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register() -> str:
    """Register :func:`varlen_sdpa_attention` (and its mask function) with transformers; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, varlen_sdpa_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _mask)
    return ATTN_IMPLEMENTATION


def _implementation(model: Any) -> str:
    return str(getattr(getattr(model, "config", None), "_attn_implementation", None) or "")


def applies(model: Any) -> bool:
    """Whether ``model`` can train on flattened batches: SDPA attention (replaced by :func:`varlen_sdpa_attention`
    while training) or a FlashAttention implementation (varlen already: transformers reads ``cu_seq_lens_q``)."""
    name = _implementation(model)
    return name == "sdpa" or name.startswith("flash_attention")


@contextmanager
def attention(model: Any) -> Iterator[None]:
    """Within the block, ``model`` attends per sequence on flattened batches; its implementation is restored after.

    SDPA models switch to :func:`varlen_sdpa_attention`; FlashAttention models are left as they are.

    Raises:
        ValueError: the model's attention cannot keep flattened sequences apart (see :func:`applies`).
    """
    name = _implementation(model)
    if not applies(model):
        raise ValueError(f"padding-free batching needs SDPA or FlashAttention; this model uses '{name}'.")
    if name != "sdpa":
        yield
        return
    model.set_attn_implementation(register())
    try:
        yield
    finally:
        model.set_attn_implementation("sdpa")


def collator() -> Any:
    """``DataCollatorWithFlattening`` set to emit position ids and the sequence offsets the attention reads."""
    from transformers import DataCollatorWithFlattening

    return DataCollatorWithFlattening(return_position_ids=True, return_flash_attn_kwargs=True)
