"""Batched generation with left padding: greedy or sampled, several samples per prompt, stop strings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from runner.logging import progress


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string."""
    cut = len(text)
    for s in stop_strings:
        if s:
            i = text.find(s)
            if i >= 0:
                cut = min(cut, i)
    return text[:cut]


def left_pad(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both ``[B, max_len]`` int64, sequences right-aligned (pad on the left)."""
    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, seq in enumerate(batch):
        if len(seq):
            ids[i, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[i, width - len(seq):] = 1
    return ids, mask


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int,
             batch_size: int = 8, temperature: float = 0.0, top_p: float = 1.0, num_samples: int = 1,
             seed: int = 0, stop_strings: Sequence[str] = (), description: str = "generate") -> list[list[str]]:
    """Continue each prompt; returns ``num_samples`` decoded continuations per prompt, in input order.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer (pad and eos ids; decoding).
        prompt_ids: token ids of each prompt (special tokens already added as in training).
        max_new_tokens: generation budget per continuation.
        batch_size: prompts per ``generate`` call (prompts are sorted by length to limit padding).
        temperature: 0 means greedy decoding; > 0 samples.
        top_p: nucleus threshold when sampling.
        num_samples: continuations per prompt.
        seed: seed of the sampling RNG (the same seed gives the same samples).
        stop_strings: each continuation is cut at the first of these.

    Returns:
        ``list[list[str]]`` of shape ``[len(prompt_ids)][num_samples]``.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    out: list[list[str]] = [[] for _ in prompt_ids]
    sampling = temperature > 0
    gen_kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=sampling,
                                      num_return_sequences=num_samples, pad_token_id=tokenizer.pad_token_id,
                                      eos_token_id=tokenizer.eos_token_id)
    if sampling:
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with progress(description, len(prompt_ids)) as bar:
            for start in range(0, len(order), batch_size):
                idx = order[start: start + batch_size]
                ids, mask = left_pad([prompt_ids[i] for i in idx], tokenizer.pad_token_id)
                seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **gen_kwargs)
                new = seqs[:, ids.shape[1]:]
                texts = tokenizer.batch_decode(new, skip_special_tokens=True)
                for j, i in enumerate(idx):
                    out[i] = [cut_at_stop(t, stop_strings) for t in texts[j * num_samples: (j + 1) * num_samples]]
                bar.advance(len(idx))
    finally:
        torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return out
