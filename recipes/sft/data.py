"""Prompt-completion encoding for SFT: completion-only labels, EOS learnt, over-length rows dropped, padding.

A row becomes ``input_ids = prompt_ids + completion_ids + [eos]`` and ``labels = [-100] * len(prompt_ids) +
completion_ids + [eos]``. Labels are built from lengths, never by masking pad ids, so the EOS stays in the labels even
when the tokenizer's pad token equals its EOS token. Rows longer than ``train.max_seq_len`` are dropped (truncation
would cut the answer and the EOS) and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from runner.data import Example, render
from runner.errors import ModelError

IGNORE_INDEX = -100


def prompt_text(prompt: str, tokenizer: Any, use_chat_template: bool) -> str:
    """The prompt as the model sees it: raw, or wrapped by the tokenizer's chat template as a user turn.

    Raises:
        ModelError: the chat template is asked for (``method.use_chat_template=true``) but the tokenizer has none.
    """
    if not use_chat_template:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("'method.use_chat_template' is true but the model's tokenizer has no chat template; set "
                         "method.use_chat_template=false or use a model whose tokenizer has one (e.g. tiny-qwen2).")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def encode_prompt(text: str, tokenizer: Any, use_chat_template: bool) -> list[int]:
    """Token ids of a prompt already formatted by :func:`prompt_text` (BOS added unless the template has it)."""
    return list(tokenizer(text, add_special_tokens=not use_chat_template)["input_ids"])


def encode_pair(prompt: str, completion: str, tokenizer: Any, use_chat_template: bool) -> dict[str, list[int]]:
    """``{"input_ids", "labels"}`` of one prompt-completion pair (completion-only labels, EOS appended)."""
    p_ids = encode_prompt(prompt_text(prompt, tokenizer, use_chat_template), tokenizer, use_chat_template)
    c_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    return {"input_ids": p_ids + c_ids, "labels": [IGNORE_INDEX] * len(p_ids) + c_ids}


@dataclass
class EncodedSplit:
    """Encoded training rows and what was dropped."""

    rows: list[dict[str, list[int]]]
    dropped: int
    max_len: int


def encode_examples(examples: Sequence[Example], tokenizer: Any, data_cfg: Any, use_chat_template: bool,
                    max_seq_len: int) -> EncodedSplit:
    """Encode rows for training; rows over ``max_seq_len`` tokens are dropped and counted."""
    rows, dropped, longest = [], 0, 0
    for ex in examples:
        prompt, completion = render(ex, data_cfg)
        enc = encode_pair(prompt, completion, tokenizer, use_chat_template)
        n = len(enc["input_ids"])
        longest = max(longest, n)
        if n > max_seq_len:
            dropped += 1
            continue
        rows.append(enc)
    return EncodedSplit(rows, dropped, longest)


class CompletionCollator:
    """Right-pads a list of ``{"input_ids", "labels"}`` into tensors ``[B, T]``; padding gets label -100 and
    attention 0.

    Args:
        pad_token_id: id written into padded positions of ``input_ids``.
        pad_to_multiple_of: round T up to a multiple of this (None: the longest row).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(features)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            input_ids[i, :k] = torch.tensor(f["input_ids"], dtype=torch.long)
            labels[i, :k] = torch.tensor(f["labels"], dtype=torch.long)
            attention[i, :k] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
        for key in features[0]:
            if key not in batch and isinstance(features[0][key], (int, float)):
                batch[key] = torch.tensor([f[key] for f in features])
        return batch
