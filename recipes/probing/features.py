"""Representations from a frozen backbone: tokenization with over-length dropping, pooling, batched extraction, and
a features cache in the run dir.

MRMBench's rule (github.com/wangclnlp/MRMBench ``src/task1_discriminant_rm_deepspeed_cate_2.py``, ``TextDataset`` and
``RewardModel_Subtask.forward``): tokenize ``input + output`` with the tokenizer's special tokens, drop samples longer
than ``max_seq_len`` tokens, right-pad, run the backbone (``AutoModel``: no LM or value head), and take the final
hidden state (``output[0]``, after the final norm) at index ``first PAD position - 1``, i.e. the last real token. Here
that index is read from the attention mask (``mask.sum(1) - 1``), which is the same position whenever padding is on
the right and the pad token is distinct from EOS, and stays right when a tokenizer pads with its EOS.

For an encoder such as BERT the "last real token" is ``[SEP]``; sentence encoders like all-MiniLM-L6-v2 were trained
with mean pooling over real tokens (their ``1_Pooling/config.json``), so ``pooling`` is a knob: ``last_token``,
``mean`` or ``cls``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("runner.probing")


@dataclass
class EncodedTexts:
    """Token ids of texts; ``ids[i]`` is None where text ``i`` was longer than the limit (dropped)."""

    ids: list[list[int] | None]
    dropped: int
    longest: int

    @property
    def kept(self) -> list[int]:
        """Indices of the texts that were not dropped."""
        return [i for i, x in enumerate(self.ids) if x is not None]


def encode_texts(texts: Sequence[str], tokenizer: Any, max_seq_len: int, append_eos: bool = True) -> EncodedTexts:
    """Tokenize ``texts`` with the tokenizer's special tokens (BOS for LLaMA, [CLS] ... [SEP] for BERT); append EOS
    when ``append_eos`` and the tokenizer has one (and the text does not already end with it); drop every text longer
    than ``max_seq_len`` tokens (MRMBench drops, never truncates).

    Returns:
        :class:`EncodedTexts` (``longest`` counts tokens before dropping).
    """
    eos = tokenizer.eos_token_id if append_eos else None
    batch = tokenizer(list(texts), add_special_tokens=True)["input_ids"] if texts else []
    ids: list[list[int] | None] = []
    dropped = longest = 0
    for x in batch:
        x = list(x)
        if eos is not None and (not x or x[-1] != eos):
            x.append(eos)
        longest = max(longest, len(x))
        if len(x) > max_seq_len:
            ids.append(None)
            dropped += 1
        else:
            ids.append(x)
    return EncodedTexts(ids, dropped, longest)


def pool_hidden(hidden: Any, attention_mask: Any, pooling: str) -> Any:
    """One vector per sequence from final hidden states.

    Args:
        hidden: ``(B, T, d)`` final hidden states.
        attention_mask: ``(B, T)``, 1 on real tokens; ``last_token`` needs right padding (each row 1...1 0...0).
        pooling: ``last_token`` (state at position ``mask.sum(1) - 1``), ``mean`` (mean over real tokens) or ``cls``
            (position 0).

    Returns:
        ``(B, d)`` in float32.

    Raises:
        ValueError: a row of the mask is not right-padded (``last_token``), or an unknown pooling.
    """
    import torch

    hidden = hidden.float()
    mask = attention_mask.to(hidden.device)
    if pooling == "cls":
        return hidden[:, 0]
    lengths = mask.long().sum(1)
    if pooling == "mean":
        return (hidden * mask[..., None].float()).sum(1) / lengths.clamp_min(1)[:, None].float()
    if pooling == "last_token":
        positions = torch.arange(mask.shape[1], device=mask.device)
        if not torch.equal(mask.bool(), positions[None, :] < lengths[:, None]) or bool((lengths == 0).any()):
            raise ValueError("last_token pooling needs right-padded batches (attention mask rows 1...1 0...0, at "
                             "least one real token); set tokenizer.padding_side='right'.")
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
    raise ValueError(f"unknown pooling '{pooling}'; valid: last_token, mean, cls.")


def right_pad(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)``, both ``(B, max_len)`` long tensors, padded on the right with ``pad_id``."""
    import torch

    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, x in enumerate(batch):
        ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[r, : len(x)] = 1
    return ids, mask


def extract_features(backbone: Any, ids: Sequence[Sequence[int]], pad_id: int, pooling: str, batch_size: int = 16,
                     progress: Callable[[int], None] | None = None) -> Any:
    """Pooled final hidden states of a frozen backbone, one row per sequence, in the order of ``ids``.

    Sequences are sorted by length and batched (less padding), right-padded with ``pad_id``, run under
    ``torch.inference_mode`` in eval mode (dropout off), and pooled with :func:`pool_hidden`.

    Args:
        backbone: an ``AutoModel`` (its ``output[0]`` is the final hidden state, ``(B, T, d)``).
        ids: token ids per sequence (none longer than the model accepts).
        pad_id: the pad token id.
        pooling: see :func:`pool_hidden`.
        batch_size: sequences per forward pass.
        progress: called with the number of sequences done after each batch.

    Returns:
        ``(len(ids), d)`` float32 tensor on the CPU.
    """
    import torch

    device = next(backbone.parameters()).device
    backbone.eval()
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out: torch.Tensor | None = None
    done = 0
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            input_ids, mask = right_pad([ids[i] for i in rows], pad_id)
            hidden = backbone(input_ids=input_ids.to(device), attention_mask=mask.to(device))[0]
            pooled = pool_hidden(hidden, mask, pooling).cpu()
            if out is None:
                out = torch.empty((len(ids), pooled.shape[1]), dtype=torch.float32)
            out[torch.tensor(rows)] = pooled
            done += len(rows)
            if progress is not None:
                progress(done)
    if out is None:
        hidden_size = getattr(backbone.config, "hidden_size", 0)
        return torch.empty((0, hidden_size), dtype=torch.float32)
    return out


def fingerprint(texts: Sequence[str], **settings: Any) -> str:
    """A sha256 over the texts (in order) and the extraction settings: what decides a features file's content."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for t in texts:
        h.update(hashlib.sha256(t.encode("utf-8")).digest())
    return h.hexdigest()


def cached_features(path: Path, key: str, compute: Callable[[], Any]) -> tuple[Any, bool]:
    """The features stored at ``path`` (safetensors) if its metadata key equals ``key``; else ``compute()``, saved
    there atomically (temporary file + rename) with ``key``. Returns ``(features, loaded_from_cache)``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    if path.exists():
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("key") == key:
                    return f.get_tensor("features"), True
        except Exception:  # an unreadable cache is recomputed
            log.warning("features cache %s is unreadable; recomputing", path)
    feats = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file({"features": feats.contiguous()}, tmp, metadata={"key": key})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return feats, False


def load_backbone(cfg: Any, precision: str) -> tuple[Any, Any]:
    """The frozen backbone (an ``AutoModel``, no head) and its right-padding tokenizer, on ``hardware.device``.

    A causal LM or reward-model checkpoint loads through ``AutoModel`` (its LM or value head is dropped, as MRMBench
    does); a tiny model is built through its usual causal-LM path (so the shared model cache is never written with
    another class) and its ``base_model`` kept. Every parameter gets ``requires_grad=False``; dropout is off.

    The pad token is kept distinct from EOS where the tokenizer allows it (``unk`` replaces an EOS pad), so the
    paper's "first PAD - 1" and our mask-based index agree.
    """
    from omegaconf import OmegaConf

    from runner.models import load_model

    mcfg = cfg.model
    if mcfg.build != "tiny" and mcfg.auto_class != "base":
        mcfg = OmegaConf.merge(mcfg, {"auto_class": "base"})
    model, tokenizer = load_model(mcfg, cfg.hardware, cfg.cache_dir, precision=precision)
    backbone = model.base_model
    backbone.requires_grad_(False)
    backbone.eval()
    if cfg.hardware.device == "cuda":
        backbone.to("cuda")
    tokenizer.padding_side = "right"
    if tokenizer.eos_token_id is not None and tokenizer.pad_token_id == tokenizer.eos_token_id and \
            tokenizer.unk_token_id is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
        tokenizer.pad_token = tokenizer.unk_token
    return backbone, tokenizer


def max_positions(backbone_or_config: Any) -> int | None:
    """The longest input the model's position embeddings allow (None when unbounded or unknown)."""
    config = getattr(backbone_or_config, "config", backbone_or_config)
    return getattr(config, "max_position_embeddings", None)
