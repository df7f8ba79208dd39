"""LRHP preference representations and their two downstream tasks: the mathematics, with no I/O.

Paper: C. Wang, Y. Gan et al., "LRHP: Learning Representations for Human Preferences via Preference Pairs", arXiv
2410.04503. Its body and code were not available; the abstract fixes the task (encode a pair (prompt, preferred,
dispreferred) into a representation richer than a scalar reward) and the two applications, preference data selection
(PDS) and preference margin prediction (PMP). **Everything below is a proposal** (METHODS.md Part B section 2, [INF]),
kept pluggable:

* Encoder (:class:`PairEncoder`): h is a frozen backbone's pooled state (MRMBench's convention), g a trained MLP
  (or the identity: ``method.projection=none``).
  ``concat``: z = g(h(x + "Response A:" y_a + "Response B:" y_b)), p(A preferred) = sigmoid(w z + b).
  ``difference``: z = g(h(x + y_a)) - g(h(x + y_b)), p = sigmoid(w z) (no bias): p(A>B) + p(B>A) = 1 exactly.
  Trained with BCE on both orders of every pair ((y_w, y_l) label 1, (y_l, y_w) label 0) against position bias.
* PDS (:func:`select_by_centroid`): rank pool pairs by the cosine similarity of their z to the mean z of a small seed
  set carrying the target preference (both relative to the pool's mean z); keep the top N. A Bradley-Terry reward model trained on them is compared with
  one trained on N random pool pairs.
* PMP (:class:`MarginHead`): regress gold margins from z with a small MLP (Spearman correlation reported); the
  predicted margin m can enter a margin loss, -log sigmoid(r(x, y_w) - r(x, y_l) - m) (LLaMA-2's margin loss,
  Touvron et al. 2023, eq. 2), which is the Bradley-Terry loss when m = 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from recipes.probing.optim import HeadOptim, fit
from runner.errors import DataError
from runner.pairs import PreferencePair

SELECTORS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {}
"""PDS ranking rules by ``method.selection`` name: ``f(z_pool (n, r), z_seed (s, r), n_select) -> (indices, scores)``."""


def pair_text(prompt: str, a: str, b: str, template: str) -> str:
    """The ``concat`` encoder's text of the ordered pair (a first, b second)."""
    return template.format(prompt=prompt, a=a, b=b)


class PairEncoder(nn.Module):
    """Pair features -> representation z -> preference logit ``(n,)`` (p(A preferred) = sigmoid).

    ``concat``: ``forward(h_ab)`` with ``h_ab`` ``(n, d)`` the features of the ordered pair text.
    ``difference``: ``forward(h_a, h_b)`` with pointwise features ``(n, d)`` each; z = g(h_a) - g(h_b).
    ``projection="mlp"``: g is ``Linear(d, rep_dim) -> GELU -> Linear(rep_dim, rep_dim)`` (a learned representation,
    ``(n, rep_dim)``); ``"none"``: g is the identity, z is the backbone's pooled state itself (``(n, d)``: the
    proposal's "z = the final hidden state" with the backbone frozen) and only the head trains.
    """

    def __init__(self, hidden_size: int, rep_dim: int, kind: str = "concat", projection: str = "mlp"):
        super().__init__()
        if kind not in ("concat", "difference"):
            raise ValueError(f"unknown LRHP encoder '{kind}'; valid: concat, difference")
        if projection not in ("mlp", "none"):
            raise ValueError(f"unknown LRHP projection '{projection}'; valid: mlp, none")
        self.kind = kind
        if projection == "mlp":
            self.g: nn.Module = nn.Sequential(nn.Linear(hidden_size, rep_dim), nn.GELU(), nn.Linear(rep_dim, rep_dim))
        else:
            self.g, rep_dim = nn.Identity(), hidden_size
        self.rep_dim = rep_dim
        self.head = nn.Linear(rep_dim, 1, bias=kind == "concat")

    def represent(self, h_a: torch.Tensor, h_b: torch.Tensor | None = None) -> torch.Tensor:
        """z ``(n, rep_dim)``."""
        if self.kind == "difference":
            if h_b is None:
                raise ValueError("the difference encoder needs the features of both responses")
            return self.g(h_a) - self.g(h_b)
        return self.g(h_a)

    def forward(self, h_a: torch.Tensor, h_b: torch.Tensor | None = None) -> torch.Tensor:
        """Preference logit ``(n,)`` of "A is preferred"."""
        return self.head(self.represent(h_a, h_b))[:, 0]


def train_pair_encoder(encoder: PairEncoder, feats_wl: tuple[torch.Tensor, ...], feats_lw: tuple[torch.Tensor, ...],
                       opt: HeadOptim, orders: str = "both", on_step: Any = None) -> list[float]:
    """Train ``encoder`` with BCE on "A preferred?".

    Args:
        feats_wl: the encoder's inputs with the chosen response as A: ``(h_wl,)`` (concat) or ``(h_w, h_l)``.
        feats_lw: the same pairs with the rejected response as A: ``(h_lw,)`` or ``(h_l, h_w)``.
        orders: ``both`` (the method: label 1 for ``feats_wl``, 0 for ``feats_lw``) or ``chosen_first`` (only
            ``feats_wl`` with label 1; what position bias looks like, for tests and ablations).
    """
    if orders == "both":
        inputs = tuple(torch.cat([a, b]) for a, b in zip(feats_wl, feats_lw))
        labels = torch.cat([torch.ones(len(feats_wl[0])), torch.zeros(len(feats_lw[0]))])
    elif orders == "chosen_first":
        inputs, labels = feats_wl, torch.ones(len(feats_wl[0]))
    else:
        raise ValueError(f"unknown orders '{orders}'; valid: both, chosen_first")

    def loss(idx: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(encoder(*(x[idx] for x in inputs)), labels[idx])

    return fit(encoder, len(labels), loss, opt, on_step)


@torch.no_grad()
def preference_probs(encoder: PairEncoder, feats_wl: tuple[torch.Tensor, ...],
                     feats_lw: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p(chosen > rejected) with chosen as A, p(rejected > chosen) with rejected as A)``, each ``(n,)``.

    A position-consistent encoder has ``p_wl + p_lw ~ 1``; the pair is ranked right when ``p_wl > p_lw``.
    """
    encoder.eval()
    return torch.sigmoid(encoder(*feats_wl)), torch.sigmoid(encoder(*feats_lw))


# --------------------------------------------------------------------------------------------------------------------
# Preference data selection
# --------------------------------------------------------------------------------------------------------------------


def select_by_centroid(z_pool: torch.Tensor, z_seed: torch.Tensor, n_select: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n_select`` pool rows most similar to the seed set: cosine similarity to the mean seed z, both taken
    relative to the pool's mean z (language-model states share a large common direction that would otherwise make
    every cosine close to 1; Ethayarajh 2019).

    Args:
        z_pool: ``(n, r)`` pool representations.
        z_seed: ``(s, r)`` seed representations (the target preference).
        n_select: how many to keep (at most n).

    Returns:
        ``(indices (n_select,), scores (n,))``, indices by descending score (ties by index).
    """
    mu = z_pool.double().mean(0, keepdim=True)
    centroid = z_seed.double().mean(0, keepdim=True) - mu
    scores = nn.functional.cosine_similarity(z_pool.double() - mu, centroid, dim=1).float()
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return torch.tensor(order[:n_select], dtype=torch.long), scores


SELECTORS["centroid"] = select_by_centroid


def precision_at(selected: torch.Tensor, is_target: torch.Tensor) -> float:
    """Share of ``selected`` indices whose ``is_target`` ``(n,)`` is True (0.0 for none)."""
    return float(is_target[selected].float().mean()) if len(selected) else 0.0


# --------------------------------------------------------------------------------------------------------------------
# Reward models and margins
# --------------------------------------------------------------------------------------------------------------------


def margin_bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                   margin: torch.Tensor | None = None) -> torch.Tensor:
    """Mean ``-log sigmoid(r_chosen - r_rejected - margin)`` over ``(n,)`` rewards; ``margin`` None or 0 gives the
    Bradley-Terry loss ``-log sigmoid(r_chosen - r_rejected)`` exactly (LLaMA-2, Touvron et al. 2023, eq. 2)."""
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    return -nn.functional.logsigmoid(diff).mean()


class LinearRewardModel(nn.Module):
    """r(x, y) = w . h(x + y) on the frozen backbone's pooled state: a reward head, ``(n, d) -> (n,)``."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.v_head = nn.Linear(hidden_size, 1, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.v_head(h)[:, 0]


def train_reward_model(h_chosen: torch.Tensor, h_rejected: torch.Tensor, opt: HeadOptim,
                       margins: torch.Tensor | None = None) -> LinearRewardModel:
    """A :class:`LinearRewardModel` trained with :func:`margin_bt_loss` on ``(n, d)`` pointwise features."""
    with torch.random.fork_rng():
        torch.manual_seed(opt.seed)
        rm = LinearRewardModel(h_chosen.shape[1])

    def loss(idx: torch.Tensor) -> torch.Tensor:
        return margin_bt_loss(rm(h_chosen[idx]), rm(h_rejected[idx]), None if margins is None else margins[idx])

    fit(rm, len(h_chosen), loss, opt)
    return rm


@torch.no_grad()
def pairwise_accuracy(rm: nn.Module, h_chosen: torch.Tensor, h_rejected: torch.Tensor) -> float:
    """Share of pairs with ``r(chosen) > r(rejected)`` (0.0 for none)."""
    if len(h_chosen) == 0:
        return 0.0
    return float((rm(h_chosen) > rm(h_rejected)).float().mean())


class MarginHead(nn.Module):
    """z ``(n, r)`` -> predicted margin ``(n,)``: ``Linear(r, hidden) -> GELU -> Linear(hidden, 1)``, trained on
    standardized targets (``mean``/``std`` buffers map predictions back to the margins' scale)."""

    def __init__(self, rep_dim: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(rep_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)[:, 0] * self.std + self.mean


def train_margin_head(z: torch.Tensor, margins: torch.Tensor, opt: HeadOptim, hidden: int = 64) -> MarginHead:
    """A :class:`MarginHead` fit to ``margins`` ``(n,)`` from ``z`` ``(n, r)`` with mean squared error."""
    with torch.random.fork_rng():
        torch.manual_seed(opt.seed)
        head = MarginHead(z.shape[1], hidden)
    head.mean.fill_(float(margins.mean()))
    head.std.fill_(float(margins.std()) if len(margins) > 1 and float(margins.std()) > 0 else 1.0)
    target = (margins - head.mean) / head.std

    def loss(idx: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(head.net(z[idx])[:, 0], target[idx])

    fit(head, len(z), loss, opt)
    return head


def correlations(pred: torch.Tensor, gold: torch.Tensor) -> dict[str, float]:
    """Spearman and Pearson correlation (``scipy.stats``) of predicted with gold margins; NaN for < 2 rows."""
    from scipy import stats

    if len(pred) < 2:
        return {"spearman": float("nan"), "pearson": float("nan")}
    p, g = pred.double().numpy(), gold.double().numpy()
    return {"spearman": float(stats.spearmanr(p, g).statistic), "pearson": float(stats.pearsonr(p, g).statistic)}


# --------------------------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------------------------


def split_pairs(pairs: list[PreferencePair], target_subset: str | None, seed_size: int, test_size: int,
                seed: int) -> tuple[list[PreferencePair], list[PreferencePair], list[PreferencePair]]:
    """``(seed set, target test, pool)``: disjoint, seeded.

    With a ``target_subset`` (PDS): the target pairs are shuffled; the first ``seed_size`` are the seed set, the next
    ``test_size`` the test set, the rest join every other pair in the pool. Without one (PMP only): no seed set,
    ``test_size`` random pairs for testing, the rest the pool.

    Raises:
        DataError: too few target pairs for seed + test + at least one in the pool, or an empty pool.
    """
    import random

    rng = random.Random(seed)
    if target_subset is None:
        order = list(pairs)
        rng.shuffle(order)
        seed_set, test, pool = [], order[:test_size], order[test_size:]
    else:
        target = [p for p in pairs if p.subset == target_subset]
        if len(target) < seed_size + test_size + 1:
            found = sorted({p.subset for p in pairs})
            raise DataError(f"method.target_subset='{target_subset}' has {len(target)} pairs in the data (subsets "
                            f"found: {found}); PDS needs method.seed_size={seed_size} + method.target_test_size="
                            f"{test_size} + at least 1 for the pool. Lower them or load more pairs (data.max_samples).")
        rng.shuffle(target)
        seed_set, test = target[:seed_size], target[seed_size:seed_size + test_size]
        held = {id(p) for p in seed_set + test}
        pool = [p for p in pairs if id(p) not in held]
    if not pool:
        raise DataError("no pairs are left for the pool after the seed and test sets; load more pairs.")
    return seed_set, test, pool
