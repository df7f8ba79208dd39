"""OXA's mathematics: response perplexity, the promote-set selector, the suppress-set filter, the unlikelihood loss
and the sampler that puts a fixed number of suppress rows in every global batch.

OXA ("Offline Exploration-Aware Fine-Tuning for Long-Chain Mathematical Reasoning", Mu et al., arXiv 2603.16206;
code: github.com/takagi97/OXA-Fine-tuning) fine-tunes on two sets:

* the **promote** set: verified teacher responses whose perplexity (PPL) under the student base model follows a
  truncated Gaussian over PPL bins (``make_OXA_MLE_data.py``), trained with cross-entropy (``loss_type=0``);
* the **suppress** set: the student's own incorrect samples, the most confident ones (lowest PPL) after dropping
  PPL < 1.2 (``make_ULloss_data.py``), trained with the unlikelihood loss ``-log(1 - p)`` (``loss_type=1``).

Everything here is a function or class without I/O; ``recipes/sft/oxa_recipe.py`` wires it to models, data and the
run dir. Where the code and the paper differ, this module follows the code and says so.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
CE, UL = 0, 1
"""``loss_type`` of a promote (cross-entropy) row and of a suppress (unlikelihood) row, as in the OXA data files."""
MAX_P = 1.0 - 1e-6
"""The target probability is clamped to at most this before ``-log(1 - p)`` (OXA's trainer.py)."""
_LOG_HALF = math.log(0.5)


# --------------------------------------------------------------------------------------------------------------------
# Perplexity (confidence)
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def sequence_perplexities(model: Any, sequences: Sequence[Sequence[int]], pad_id: int,
                          batch_size: int = 8) -> list[tuple[float, int]]:
    """Perplexity of each token sequence under ``model``: ``exp(mean NLL of tokens 1..L-1)``.

    OXA's confidence (``cal_ppl.py``): each response string is tokenized *alone* (no prompt, the tokenizer's own
    special tokens, e.g. a BOS) and every token after the first is scored given its prefix, exactly as
    ``model(ids, labels=ids).loss``. High PPL means low confidence.

    Args:
        model: a causal LM (evaluation mode is set and restored).
        sequences: token ids of each text (length >= 2 to have a scored token).
        pad_id: id used for right padding (masked out).
        batch_size: sequences per forward pass (sorted by length to limit padding).

    Returns:
        ``[(ppl, scored_tokens)]`` in input order; ``(nan, 0)`` for a sequence shorter than 2 tokens.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = [(float("nan"), 0)] * len(sequences)
    order = sorted((i for i in range(len(sequences)) if len(sequences[i]) >= 2), key=lambda i: -len(sequences[i]))
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            width = max(len(sequences[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for j, i in enumerate(idx):
                ids[j, : len(sequences[i])] = torch.tensor(list(sequences[i]), dtype=torch.long)
                mask[j, : len(sequences[i])] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1),
                                  reduction="none").view(len(idx), -1)
            m = mask[:, 1:].float()
            mean_nll = (nll * m).sum(1) / m.sum(1)
            for j, i in enumerate(idx):
                out[i] = (math.exp(float(mean_nll[j])), int(m[j].sum()))
    finally:
        model.train(was_training)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Promote set: truncated-Gaussian PPL bins
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A scored response: the prompt it answers (``query_id``), its PPL under the base model, its length (tokens)."""

    query_id: str
    ppl: float
    length: int = 0


def num_bins(ppl_min: float, ppl_max: float, bin_width: float) -> int:
    """``round((ppl_max - ppl_min) / bin_width)`` (80 bins for OXA's [1, 5] at width 0.05)."""
    return int(round((ppl_max - ppl_min) / bin_width))


def bin_index(ppl: float, ppl_min: float, ppl_max: float, bin_width: float) -> int | None:
    """The bin of ``ppl``: ``floor((ppl - ppl_min) / bin_width + 1e-9)``; ``ppl == ppl_max`` falls in the last bin;
    None outside ``[ppl_min, ppl_max]`` or for NaN (``make_OXA_MLE_data.py: get_bin_index``)."""
    if not ppl_min <= ppl <= ppl_max:  # False for NaN too
        return None
    n = num_bins(ppl_min, ppl_max, bin_width)
    return min(int((ppl - ppl_min) / bin_width + 1e-9), n - 1)


def gaussian_bin_targets(total: int, mu: float, sigma: float, ppl_min: float, ppl_max: float,
                         bin_width: float) -> list[int]:
    """Per-bin target counts of a Gaussian N(mu, sigma^2) truncated to ``[ppl_min, ppl_max]``.

    The density is taken at each bin's middle ``ppl_min + (i + 0.5) * bin_width``, normalised over the bins, times
    ``total``; counts are floored and the remainder goes one each to the bins with the largest fractional parts, so
    they sum to ``total`` exactly (``make_OXA_MLE_data.py: compute_target_bin_counts``).

    Raises:
        ValueError: ``sigma <= 0``, an empty range, or a density that is zero on every bin (mu far outside).
    """
    if sigma <= 0 or ppl_max <= ppl_min or bin_width <= 0 or total < 0:
        raise ValueError(f"need sigma > 0, ppl_max > ppl_min, bin_width > 0 and total >= 0; got sigma={sigma}, "
                         f"range=[{ppl_min}, {ppl_max}], bin_width={bin_width}, total={total}")
    n = num_bins(ppl_min, ppl_max, bin_width)
    pdf = [math.exp(-0.5 * ((ppl_min + (i + 0.5) * bin_width - mu) / sigma) ** 2) for i in range(n)]
    z = sum(pdf)
    if z == 0:
        raise ValueError(f"the Gaussian N({mu}, {sigma}^2) is zero on every bin of [{ppl_min}, {ppl_max}]; move mu "
                         "into the range or widen sigma.")
    desired = [total * p / z for p in pdf]
    counts = [int(math.floor(d)) for d in desired]
    by_fraction = sorted(range(n), key=lambda i: desired[i] - counts[i], reverse=True)
    for i in by_fraction[: total - sum(counts)]:
        counts[i] += 1
    return counts


def select_promote(candidates: Sequence[Candidate], total: int, *, mu: float, sigma: float, ppl_min: float = 1.0,
                   ppl_max: float = 5.0, bin_width: float = 0.05, per_query: int = 1,
                   seed: int = 42) -> tuple[list[int], list[int], list[int]]:
    """OXA's promote set: indices of ``candidates`` whose PPLs follow the truncated Gaussian of
    :func:`gaussian_bin_targets`.

    Follows ``make_OXA_MLE_data.py: sample_with_query_cap``: bins are filled in increasing PPL order; inside a bin
    the longest responses come first (ties broken by a seeded random key); a prompt contributes at most ``per_query``
    responses over all bins, taken in rounds (first one per prompt within the bin, then a second...). A bin with too
    few candidates stays short: the shortage is not moved to other bins (as in the code). A response is never taken
    twice (the code's later rounds can re-take one; with the released ``per_query=1`` there is a single round).

    Args:
        candidates: the scored, verified teacher responses.
        total: the target size of the promote set (50,000 in the paper).
        mu, sigma: the Gaussian (mu = 2.5 for Qwen2.5-Math-1.5B, 3.0 for 7B; sigma = 0.25).
        ppl_min, ppl_max, bin_width: the PPL range and bin width ([1, 5] and 0.05).
        per_query: cap of responses per prompt (the final OXA sets use 1).
        seed: seed of the tie-breaking random key.

    Returns:
        (selected indices in bin order, per-bin target counts, per-bin selected counts).
    """
    targets = gaussian_bin_targets(total, mu, sigma, ppl_min, ppl_max, bin_width)
    by_bin: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(candidates):
        b = bin_index(c.ppl, ppl_min, ppl_max, bin_width)
        if b is not None:
            by_bin[b].append(i)
    rnd = random.Random(seed)
    used: dict[str, int] = defaultdict(int)
    selected: list[int] = []
    got = [0] * len(targets)
    for b, target in enumerate(targets):
        if target <= 0:
            continue
        items = sorted(by_bin.get(b, []), key=lambda i: (candidates[i].length, rnd.random()), reverse=True)
        taken: list[int] = []
        taken_set: set[int] = set()
        local: dict[str, int] = defaultdict(int)
        for cap in range(1, per_query + 1):
            for i in items:
                if len(taken) >= target:
                    break
                q = candidates[i].query_id
                if i in taken_set or used[q] >= per_query or local[q] >= cap:
                    continue
                used[q] += 1
                local[q] += 1
                taken.append(i)
                taken_set.add(i)
            if len(taken) >= target:
                break
        got[b] = len(taken)
        selected.extend(taken)
    return selected, targets, got


# --------------------------------------------------------------------------------------------------------------------
# Suppress set
# --------------------------------------------------------------------------------------------------------------------


def select_suppress(candidates: Sequence[Candidate], k: int, *, min_ppl: float = 1.2, max_tokens: int | None = None,
                    per_query: int = 1) -> list[int]:
    """OXA's suppress set: indices of the ``k`` most confident (lowest-PPL) incorrect samples, lowest first.

    Follows ``make_ULloss_data.py``: drop PPL < ``min_ppl`` (1.2: near-deterministic text such as repetition loops)
    and unusable samples (NaN PPL: failed requests; longer than ``max_tokens``: OXA drops responses over 25k tokens);
    keep the ``per_query`` lowest-PPL samples of each prompt, then the ``k`` lowest over all prompts.

    Args:
        candidates: incorrect self-generated samples with their PPL under the base model and length in tokens.
        k: the size of the suppress set (50,000 in the paper).
        min_ppl: the PPL floor.
        max_tokens: the length cap (None: no cap).
        per_query: samples kept per prompt (1 in the paper).
    """
    per_q: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(candidates):
        if math.isnan(c.ppl) or c.ppl < min_ppl or (max_tokens is not None and c.length > max_tokens):
            continue
        per_q[c.query_id].append(i)
    pool = [i for idx in per_q.values() for i in sorted(idx, key=lambda i: candidates[i].ppl)[:per_query]]
    return sorted(pool, key=lambda i: (candidates[i].ppl, i))[:k]


# --------------------------------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------------------------------


def unlikelihood(logp: torch.Tensor) -> torch.Tensor:
    """Per-token unlikelihood ``-log(1 - p)`` from ``logp = log p(y_t | x, y_<t)``, any shape, computed stably.

    As OXA's trainer.py: p is clamped to at most 1 - 1e-6; ``-log1p(-p)`` is used where log p < ln 0.5 and
    ``-log(-expm1(log p))`` elsewhere (each form is exact where the other loses digits). Both branches are evaluated
    on safe inputs so neither puts a NaN into the gradient. Values: 0.6931, 2.3026, 4.6052 at p = 0.5, 0.9, 0.99.
    """
    logp = logp.clamp(max=math.log(MAX_P))
    low = logp < _LOG_HALF
    half = torch.full_like(logp, _LOG_HALF)
    via_log1p = -torch.log1p(-torch.exp(torch.where(low, logp, half)))
    via_expm1 = -torch.log(-torch.expm1(torch.where(low, half, logp)))
    return torch.where(low, via_log1p, via_expm1)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p of each next label token ``[B, T-1]``, mask ``[B, T-1]``) for causal-LM ``logits [B, T, V]`` and
    ``labels [B, T]`` (-100 where not scored; position t's logits predict label t+1)."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    nll = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)),
                          shift_labels.clamp(min=0).reshape(-1), reduction="none").view_as(shift_labels)
    return -nll, mask


@dataclass
class OxaLoss:
    """The OXA loss of one micro-batch and its parts (sums over rows, for logging)."""

    loss: torch.Tensor
    ce_sum: float
    ce_rows: int
    ul_sum: float
    ul_rows: int


def oxa_loss(logits: torch.Tensor, labels: torch.Tensor, loss_type: torch.Tensor, ul_weight: float,
             n_ce: int | None = None, n_ul: int | None = None) -> OxaLoss:
    """``L = (1/N_ce) sum_{i in CE} mean_t[-log p] + ul_weight * (1/N_ul) sum_{j in UL} mean_t[-log(1 - p)]``.

    OXA's loss (METHODS.md §2; trainer.py ``compute_loss``): token means per sequence, averaged over the CE rows and
    over the UL rows. Both terms are computed on every micro-batch, mixed or not (OXA's code computes only the UL
    term when a micro-batch holds any UL row, which is the same at its per-device batch of 1).

    Args:
        logits: ``[B, T, V]`` model outputs.
        labels: ``[B, T]`` token ids, -100 where not trained (prompt, padding).
        loss_type: ``[B]``, 0 for a promote (CE) row, 1 for a suppress (UL) row.
        ul_weight: lambda (1e-4 in the paper).
        n_ce, n_ul: the divisors N_ce and N_ul; None counts the rows of this batch. A trainer passes the counts of the
            whole global batch so that the micro-batch losses add up to the global one.

    Returns:
        :class:`OxaLoss`; ``ce_sum`` / ``ul_sum`` are the sums of the per-row means (UL unweighted).
    """
    logp, mask = token_logprobs(logits, labels)
    maskf = mask.float()
    count = maskf.sum(1).clamp(min=1.0)
    ce_row = (-logp * maskf).sum(1) / count
    ul_row = (unlikelihood(logp) * maskf).sum(1) / count
    is_ul = loss_type.to(logits.device) == UL
    is_ce = ~is_ul
    n_ce = int(is_ce.sum()) if n_ce is None else n_ce
    n_ul = int(is_ul.sum()) if n_ul is None else n_ul
    ce_sum = (ce_row * is_ce).sum()
    ul_sum = (ul_row * is_ul).sum()
    loss = logits.new_zeros((), dtype=torch.float32)
    if n_ce > 0:
        loss = loss + ce_sum / n_ce
    if n_ul > 0:
        loss = loss + ul_weight * ul_sum / n_ul
    return OxaLoss(loss, float(ce_sum.detach()), int(is_ce.sum()), float(ul_sum.detach()), int(is_ul.sum()))


# --------------------------------------------------------------------------------------------------------------------
# Sampler
# --------------------------------------------------------------------------------------------------------------------


class MixedLossTypeSampler(torch.utils.data.Sampler[int]):
    """Row indices laid out so that every global batch holds exactly ``ul_per_batch`` suppress (UL) rows and
    ``global_batch_size - ul_per_batch`` promote (CE) rows, shuffled inside the batch.

    A global batch is one optimizer step: ``micro_batch_size x grad_accum_steps x world size`` consecutive indices
    (the data loader cuts them into micro-batches and, under DDP, deals the micro-batches to the processes in turn, so
    each step consumes one block). OXA's ``MixedLossTypeGlobalBatchSampler`` fixes the UL count per data-parallel
    micro-step (its per-device batch is 1) and grad accumulation repeats it; fixing it per optimizer step gives the
    same counts per step.

    An epoch is one pass over the CE rows, ``ceil(n_ce / (G - u))`` blocks; the last block is topped up from a fresh
    shuffle of the CE rows, and the UL rows are drawn without replacement and reshuffled when used up, so every block
    is full. [INF: OXA's code instead ends the epoch when either pool runs out a second time; with OXA's equal pool
    sizes (50k + 50k, 128 + 128 per step) both lay out the same.]

    Args:
        loss_types: ``loss_type`` of every dataset row (0 CE, 1 UL).
        global_batch_size: G, rows per optimizer step.
        ul_per_batch: u, UL rows per global batch (0: CE only).
        seed: shuffling seed; ``set_epoch`` reseeds with ``seed + epoch``.

    Raises:
        ValueError: u outside [0, G - 1], no CE rows, or u > 0 without UL rows.
    """

    def __init__(self, loss_types: Sequence[int], global_batch_size: int, ul_per_batch: int, seed: int = 0):
        self.ce = [i for i, t in enumerate(loss_types) if int(t) == CE]
        self.ul = [i for i, t in enumerate(loss_types) if int(t) == UL]
        if not 0 <= ul_per_batch < global_batch_size:
            raise ValueError(f"ul_per_batch={ul_per_batch} must lie in [0, global_batch_size - 1 = "
                             f"{global_batch_size - 1}] (each global batch needs at least one CE row).")
        if not self.ce:
            raise ValueError("the dataset has no CE (promote) rows.")
        if ul_per_batch > 0 and not self.ul:
            raise ValueError(f"ul_per_batch={ul_per_batch} but the dataset has no UL (suppress) rows.")
        self.global_batch_size = global_batch_size
        self.ul_per_batch = ul_per_batch
        self.seed = seed
        self.epoch = 0

    @property
    def num_batches(self) -> int:
        """Global batches per epoch: ``ceil(n_ce / (G - u))``."""
        return -(-len(self.ce) // (self.global_batch_size - self.ul_per_batch))

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (the Trainer calls this at the start of each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches * self.global_batch_size

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(self.seed + self.epoch)
        n_ce = self.global_batch_size - self.ul_per_batch

        def stream(pool: list[int]) -> Iterator[int]:
            while True:
                order = list(pool)
                rng.shuffle(order)
                yield from order

        ce, ul = stream(self.ce), stream(self.ul)
        for _ in range(self.num_batches):
            block = [next(ce) for _ in range(n_ce)] + [next(ul) for _ in range(self.ul_per_batch)]
            rng.shuffle(block)
            yield from block
