"""LRHP (METHODS.md Part B section 2, a proposal): pair encoder symmetry, PDS, PMP and the margin loss."""

from __future__ import annotations

import math

import pytest
import torch

from recipes.probing.lrhp import (
    PairEncoder,
    correlations,
    margin_bt_loss,
    pair_text,
    pairwise_accuracy,
    precision_at,
    preference_probs,
    select_by_centroid,
    split_pairs,
    train_margin_head,
    train_pair_encoder,
    train_reward_model,
)
from recipes.probing.optim import HeadOptim
from runner.errors import DataError
from runner.pairs import PreferencePair

OPT = HeadOptim(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0, batch_size=64, epochs=20, seed=0)


def _pairs_features(n: int, d: int = 8, seed: int = 0):
    """Responses as vectors; the chosen one scores higher along a hidden quality direction."""
    g = torch.Generator().manual_seed(seed)
    quality = torch.randn(d, generator=g)
    a, b = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    better = (a @ quality > b @ quality)[:, None]
    return torch.where(better, a, b), torch.where(better, b, a)  # (chosen, rejected)


def test_margin_loss_with_zero_margin_is_the_bradley_terry_loss_exactly():
    """(d) -log sigmoid(r_w - r_l - 0) == -log sigmoid(r_w - r_l), bit for bit."""
    rw, rl = torch.tensor([1.0, 0.3, -2.0]), torch.tensor([0.0, 0.5, -1.0])
    bt = margin_bt_loss(rw, rl)
    assert torch.equal(margin_bt_loss(rw, rl, torch.zeros(3)), bt)
    by_hand = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.2)) + math.log1p(math.exp(1.0))) / 3
    assert bt.item() == pytest.approx(by_hand, abs=1e-6)
    # a margin of 1 on the first pair: -log sigmoid(1 - 0 - 1) = ln 2
    assert margin_bt_loss(rw[:1], rl[:1], torch.ones(1)).item() == pytest.approx(math.log(2), abs=1e-7)


def test_pair_text_orders_the_responses():
    assert pair_text("Q?", "yes", "no", "{prompt} A: {a} B: {b}") == "Q? A: yes B: no"


def test_swapped_pair_symmetry_after_training_on_both_orders():
    """(a) trained on both orders, p(A>B) + p(B>A) ~ 1; trained on chosen-first only, position bias breaks it."""
    w, lo = _pairs_features(300)
    ab, ba = torch.cat([w, lo], 1), torch.cat([lo, w], 1)  # an order-aware pair feature
    torch.manual_seed(0)
    enc = PairEncoder(16, 32, "concat")
    losses = train_pair_encoder(enc, (ab[:200],), (ba[:200],), OPT, "both")
    p_ab, p_ba = preference_probs(enc, (ab[200:],), (ba[200:],))
    assert (p_ab + p_ba - 1).abs().mean() < 0.05 and losses[-1] < losses[0]
    assert ((p_ab > 0.5).float().mean() > 0.9) and ((p_ba < 0.5).float().mean() > 0.9)
    torch.manual_seed(0)
    biased = PairEncoder(16, 32, "concat")
    train_pair_encoder(biased, (ab[:200],), (ba[:200],), OPT, "chosen_first")
    p_ab, p_ba = preference_probs(biased, (ab[200:],), (ba[200:],))
    assert (p_ab + p_ba - 1).abs().mean() > 0.5  # it learnt "A always wins"


def test_difference_encoder_is_antisymmetric_by_construction():
    w, lo = _pairs_features(50)
    torch.manual_seed(0)
    enc = PairEncoder(8, 16, "difference")
    assert enc.head.bias is None and enc.rep_dim == 16
    plain = PairEncoder(8, 16, "difference", projection="none")  # z = h_a - h_b: a linear Bradley-Terry reward
    assert plain.rep_dim == 8 and torch.equal(plain.represent(w, lo), w - lo)
    p_wl, p_lw = preference_probs(enc, (w, lo), (lo, w))
    torch.testing.assert_close(p_wl + p_lw, torch.ones(50), atol=1e-6, rtol=0)
    train_pair_encoder(enc, (w[:40], lo[:40]), (lo[:40], w[:40]), OPT)
    p_wl, p_lw = preference_probs(enc, (w[40:], lo[40:]), (lo[40:], w[40:]))
    torch.testing.assert_close(p_wl + p_lw, torch.ones(10), atol=1e-6, rtol=0)
    assert (p_wl > 0.5).float().mean() >= 0.9
    with pytest.raises(ValueError, match="both responses"):
        enc.represent(w)


def test_select_by_centroid_by_hand():
    pool = torch.tensor([[2.0, 1.0], [0.0, 1.0], [-2.0, 1.0], [0.0, -3.0]])  # mean (0, 0)
    seed = torch.tensor([[1.0, 1.0], [1.0, -1.0]])  # mean (1, 0)
    idx, scores = select_by_centroid(pool, seed, 2)
    # cosines to (1, 0): 2/sqrt(5), 0, -2/sqrt(5), 0 -> top two: 0, then the tie 1 vs 3 goes to the lower index
    assert scores.tolist() == pytest.approx([2 / math.sqrt(5), 0.0, -2 / math.sqrt(5), 0.0], abs=1e-6)
    assert idx.tolist() == [0, 1]
    # relative to the pool mean: a common offset of every representation changes nothing
    shift = torch.tensor([10.0, 10.0])
    idx2, scores2 = select_by_centroid(pool + shift, seed + shift, 2)
    assert idx2.tolist() == [0, 1] and scores2.tolist() == pytest.approx(scores.tolist(), abs=1e-6)
    assert precision_at(idx, torch.tensor([True, False, False, True])) == 0.5


def test_pds_precision_above_base_rate_on_a_two_type_pool():
    """(b) a pool with two latent preference types (25% target): the selection is mostly the target type."""
    g = torch.Generator().manual_seed(0)
    d = 16
    mu_target, mu_other = torch.randn(d, generator=g), torch.randn(d, generator=g)
    is_target = torch.tensor([i % 4 == 0 for i in range(400)])
    z_pool = torch.where(is_target[:, None], mu_target, mu_other) + 0.5 * torch.randn(400, d, generator=g)
    z_seed = mu_target + 0.5 * torch.randn(8, d, generator=g)
    selected, _ = select_by_centroid(z_pool, z_seed, 50)
    base = float(is_target.float().mean())
    assert base == 0.25 and precision_at(selected, is_target) >= 0.95
    random_pick = torch.randperm(400, generator=g)[:50]
    assert precision_at(random_pick, is_target) < 0.5


def test_margin_head_fits_synthetic_margins():
    """(c) the margin head's predictions rank held-out margins with Spearman > 0.9."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 16, generator=g)
    w = torch.randn(16, generator=g)
    margins = torch.nn.functional.softplus(z @ w) + 0.05 * torch.randn(500, generator=g)
    head = train_margin_head(z[:400], margins[:400], HeadOptim(lr=1e-2, weight_decay=0.0, batch_size=64,
                                                               epochs=40, seed=0))
    with torch.no_grad():
        pred = head(z[400:])
    corr = correlations(pred, margins[400:])
    assert corr["spearman"] > 0.9 and corr["pearson"] > 0.9
    # predictions come back on the margins' scale
    assert float(pred.mean()) == pytest.approx(float(margins[400:].mean()), abs=0.2)


def test_correlations_by_hand():
    c = correlations(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 20.0, 40.0, 30.0]))
    # ranks (1,2,3,4) vs (1,2,4,3): rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert c["spearman"] == pytest.approx(0.8)
    assert math.isnan(correlations(torch.tensor([1.0]), torch.tensor([2.0]))["spearman"])


def test_reward_model_learns_the_preference_and_margins_shift_it():
    w, lo = _pairs_features(400, seed=1)
    opt = HeadOptim(lr=5e-2, weight_decay=0.0, batch_size=64, epochs=20, seed=0)
    rm = train_reward_model(w[:300], lo[:300], opt)
    assert rm.v_head.bias is None and pairwise_accuracy(rm, w[300:], lo[300:]) > 0.9
    # with a large required margin the learnt reward gap grows
    rm_m = train_reward_model(w[:300], lo[:300], opt, margins=torch.full((300,), 3.0))
    with torch.no_grad():
        gap, gap_m = (rm(w) - rm(lo)).mean(), (rm_m(w) - rm_m(lo)).mean()
    assert gap_m > gap


def _pair(i: int, subset: str) -> PreferencePair:
    return PreferencePair(f"{subset}-{i}", f"q{i}", "good", "bad", subset)


def test_split_pairs_is_disjoint_and_sized():
    pairs = [_pair(i, "harmless-base") for i in range(30)] + [_pair(i, "helpful-base") for i in range(50)]
    seed_set, test, pool = split_pairs(pairs, "harmless-base", 5, 10, seed=0)
    assert (len(seed_set), len(test), len(pool)) == (5, 10, 65)
    ids = [p.id for p in seed_set + test + pool]
    assert len(set(ids)) == 80 and all(p.subset == "harmless-base" for p in seed_set + test)
    assert sum(p.subset == "harmless-base" for p in pool) == 15
    assert split_pairs(pairs, "harmless-base", 5, 10, seed=0)[0] == seed_set  # seeded
    seed_set, test, pool = split_pairs(pairs, None, 5, 10, seed=0)
    assert (len(seed_set), len(test), len(pool)) == (0, 10, 70)
    with pytest.raises(DataError, match="has 30 pairs.*seed_size=25"):
        split_pairs(pairs, "harmless-base", 25, 10, seed=0)
