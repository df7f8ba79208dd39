"""OXA against hand values (METHODS.md §2): unlikelihood, the combined loss, the gradient sign, the truncated-Gaussian
selector, the suppress filter, the sampler's fixed suppress count, PPL scoring, and the trainer's loss scaling."""

from __future__ import annotations

import math
import random

import pytest
import torch

from recipes.sft.oxa import (
    CE,
    UL,
    Candidate,
    MixedLossTypeSampler,
    bin_index,
    gaussian_bin_targets,
    oxa_loss,
    select_promote,
    select_suppress,
    sequence_perplexities,
    unlikelihood,
)
from tests.conftest import tiny_model


def _logits_for(probs: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """One row of a 2-token vocabulary: position t predicts token 0 with probability probs[t]; labels are token 0
    after a first (unscored) position."""
    steps = len(probs)
    logits = torch.zeros(1, steps + 1, 2)
    for t, p in enumerate(probs):
        logits[0, t] = torch.tensor([math.log(p), math.log(1 - p)])
    labels = torch.tensor([[-100] + [0] * steps])
    return logits, labels


@pytest.mark.parametrize("p,expected", [(0.5, 0.6931), (0.9, 2.3026), (0.99, 4.6052)])
def test_unlikelihood_hand_values(p, expected):
    assert unlikelihood(torch.tensor(math.log(p))).item() == pytest.approx(expected, abs=1e-4)
    logits, labels = _logits_for([p])  # the same through the loss on one UL row of one token
    res = oxa_loss(logits, labels, torch.tensor([UL]), ul_weight=1.0)
    assert res.loss.item() == pytest.approx(expected, abs=1e-4)


def test_unlikelihood_is_stable_at_both_ends():
    tiny = unlikelihood(torch.tensor(math.log(1e-10)))
    assert tiny.item() == pytest.approx(1e-10, rel=1e-3)  # the naive -log(1 - p) rounds to 0 in float32
    sure = unlikelihood(torch.tensor(0.0, requires_grad=True))  # p = 1 is clamped to 1 - 1e-6
    assert sure.item() == pytest.approx(-math.log(1e-6), rel=1e-4)
    sure.backward()
    lp = torch.tensor([math.log(0.3), math.log(0.7), -1e-12], requires_grad=True)
    unlikelihood(lp).sum().backward()
    assert torch.isfinite(lp.grad).all()


def test_combined_loss_is_ce_mean_plus_weighted_ul_mean():
    # row 0 (CE): two tokens at p = 0.5 -> CE mean ln 2; row 1 (UL): two tokens at p = 0.9 -> UL mean ln 10
    ce_logits, labels = _logits_for([0.5, 0.5])
    ul_logits, _ = _logits_for([0.9, 0.9])
    res = oxa_loss(torch.cat([ce_logits, ul_logits]), torch.cat([labels, labels]), torch.tensor([CE, UL]), 1e-4)
    assert res.loss.item() == pytest.approx(math.log(2) + 1e-4 * math.log(10), abs=1e-6)  # 0.6933776
    assert (res.ce_rows, res.ul_rows) == (1, 1)
    assert res.ce_sum == pytest.approx(math.log(2), abs=1e-6) and res.ul_sum == pytest.approx(math.log(10), abs=1e-5)


def test_means_are_per_row_and_padding_is_ignored():
    # a CE row with one token at p=0.5 and a CE row with three tokens at p=0.9 (and padding): (ln2 + ln(1/0.9)) / 2
    a, la = _logits_for([0.5, 0.5, 0.5])
    la[0, 2:] = -100
    b, lb = _logits_for([0.9, 0.9, 0.9])
    res = oxa_loss(torch.cat([a, b]), torch.cat([la, lb]), torch.tensor([CE, CE]), 1e-4)
    assert res.loss.item() == pytest.approx((math.log(2) - math.log(0.9)) / 2, abs=1e-6)
    # global divisors: N_ce=4 rows in the global batch, this micro-batch holds 2 of them
    res = oxa_loss(torch.cat([a, b]), torch.cat([la, lb]), torch.tensor([CE, CE]), 1e-4, n_ce=4, n_ul=2)
    assert res.loss.item() == pytest.approx((math.log(2) - math.log(0.9)) / 4, abs=1e-6)


def test_ul_gradient_lowers_the_target_logit():
    logits, labels = _logits_for([0.9])
    logits.requires_grad_(True)
    oxa_loss(logits, labels, torch.tensor([UL]), ul_weight=1.0).loss.backward()
    assert logits.grad[0, 0, 0] > 0 > logits.grad[0, 0, 1]  # descent lowers the target's logit, raises the other
    stepped = logits.detach() - 0.1 * logits.grad
    assert torch.softmax(stepped[0, 0], -1)[0] < 0.9
    # the CE gradient has the opposite sign
    logits.grad = None
    oxa_loss(logits, labels, torch.tensor([CE]), ul_weight=1.0).loss.backward()
    assert logits.grad[0, 0, 0] < 0


def test_gaussian_targets_sum_exactly_and_peak_at_mu():
    targets = gaussian_bin_targets(50000, 2.5, 0.25, 1.0, 5.0, 0.05)
    assert len(targets) == 80 and sum(targets) == 50000
    # mu = 2.5 is the edge between bins 29 [2.45, 2.5) and 30 [2.5, 2.55): they tie for the mode
    assert max(targets) == targets[29] == targets[30] and targets.count(max(targets)) == 2
    assert all(targets[29 - i] == targets[30 + i] for i in range(30))  # symmetric around mu inside the range
    off_edge = gaussian_bin_targets(1000, 2.52, 0.25, 1.0, 5.0, 0.05)
    assert sum(off_edge) == 1000 and max(range(80), key=off_edge.__getitem__) == 30 == bin_index(2.52, 1, 5, 0.05)
    # the hand value of one bin: density at the bin middle over the sum of densities
    pdf = [math.exp(-0.5 * ((1.025 + 0.05 * i - 2.5) / 0.25) ** 2) for i in range(80)]
    assert abs(targets[30] - 50000 * pdf[30] / sum(pdf)) < 1


def test_bin_index_edges():
    assert bin_index(1.0, 1, 5, 0.05) == 0 and bin_index(1.05, 1, 5, 0.05) == 1
    assert bin_index(5.0, 1, 5, 0.05) == 79
    assert bin_index(0.99, 1, 5, 0.05) is None and bin_index(5.01, 1, 5, 0.05) is None
    assert bin_index(float("nan"), 1, 5, 0.05) is None


def test_selector_counts_range_and_mode_on_synthetic_ppls():
    rnd = random.Random(0)
    cands = [Candidate(f"q{i}", rnd.uniform(0.5, 6.0), rnd.randint(10, 500)) for i in range(30000)]
    chosen, targets, got = select_promote(cands, 2000, mu=3.0, sigma=0.25)
    assert len(chosen) == sum(got) == sum(targets) == 2000 and got == targets
    ppls = [cands[i].ppl for i in chosen]
    assert all(1.0 <= p <= 5.0 for p in ppls)
    counts = [0] * 80
    for p in ppls:
        counts[bin_index(p, 1, 5, 0.05)] += 1
    assert counts == targets
    mode = max(range(80), key=counts.__getitem__)
    assert 1 + 0.05 * mode <= 3.0 + 1e-9 <= 1 + 0.05 * (mode + 1) + 1e-9  # the mode bin touches mu
    assert len({cands[i].query_id for i in chosen}) == 2000


def test_selector_prefers_long_responses_and_caps_per_query():
    # all candidates in one bin [2.5, 2.55); target 2 there when sigma is tiny
    cands = [Candidate("a", 2.51, 10), Candidate("b", 2.52, 30), Candidate("c", 2.53, 20),
             Candidate("b", 2.54, 40), Candidate("d", 4.9, 999)]
    chosen, targets, _ = select_promote(cands, 2, mu=2.525, sigma=0.001)
    assert sum(targets) == 2 and targets[30] == 2
    assert chosen == [3, 2]  # the longest (b, 40) then (c, 20): b's second response (30) is over the cap
    chosen, _, _ = select_promote(cands, 2, mu=2.525, sigma=0.001, per_query=2)
    assert chosen == [3, 2]  # round 1 takes one per query first
    chosen, _, _ = select_promote(cands, 4, mu=2.525, sigma=0.001, per_query=2)
    assert chosen == [3, 2, 0, 1]  # round 2 then allows b's second response


def test_selector_leaves_short_bins_short():
    cands = [Candidate(f"q{i}", 3.0, 1) for i in range(3)]
    chosen, targets, got = select_promote(cands, 10, mu=3.0, sigma=0.01)
    assert len(chosen) == 3 and sum(targets) == 10 and sum(got) == 3


def test_suppress_filter_drops_low_ppl_keeps_k_lowest_one_per_query():
    cands = [Candidate("q1", 1.1), Candidate("q1", 1.5), Candidate("q1", 1.3), Candidate("q2", 2.0),
             Candidate("q3", 1.25), Candidate("q4", float("nan")), Candidate("q5", 1.21, 30000)]
    assert select_suppress(cands, 2, min_ppl=1.2, max_tokens=25000) == [4, 2]  # q3 1.25, q1 1.3 (1.1 < 1.2)
    assert select_suppress(cands, 10, min_ppl=1.2, max_tokens=25000) == [4, 2, 3]
    assert select_suppress(cands, 10, min_ppl=1.2, max_tokens=None) == [6, 4, 2, 3]
    assert select_suppress(cands, 10, min_ppl=1.2, max_tokens=None, per_query=2) == [6, 4, 2, 1, 3]


def test_sampler_puts_exactly_k_suppress_rows_in_every_global_batch():
    types = [CE] * 10 + [UL] * 6
    sampler = MixedLossTypeSampler(types, global_batch_size=4, ul_per_batch=1, seed=3)
    assert sampler.num_batches == 4 and len(sampler) == 16  # ceil(10 CE / 3 per batch)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert len(order) == 16
        blocks = [order[i: i + 4] for i in range(0, 16, 4)]
        assert all(sum(types[i] == UL for i in b) == 1 for b in blocks)
        assert set(order) >= set(range(10))  # every CE row seen in the epoch
    sampler.set_epoch(0)
    assert list(sampler) == list(sampler)  # deterministic for a seed and epoch
    half = MixedLossTypeSampler([CE] * 6 + [UL] * 2, global_batch_size=4, ul_per_batch=2)
    blocks = list(half)
    assert all(sum(i >= 6 for i in blocks[j: j + 4]) == 2 for j in range(0, len(blocks), 4))
    assert list(MixedLossTypeSampler([CE] * 3 + [UL], global_batch_size=2, ul_per_batch=0, seed=0)).count(3) == 0


def test_sampler_rejects_impossible_layouts():
    with pytest.raises(ValueError, match="at least one CE row"):
        MixedLossTypeSampler([CE, UL], global_batch_size=2, ul_per_batch=2)
    with pytest.raises(ValueError, match="no UL"):
        MixedLossTypeSampler([CE, CE], global_batch_size=2, ul_per_batch=1)
    with pytest.raises(ValueError, match="no CE"):
        MixedLossTypeSampler([UL, UL], global_batch_size=2, ul_per_batch=1)


def test_sequence_perplexity_matches_the_model_loss_per_sequence():
    model = tiny_model("qwen2").eval()
    seqs = [[1, 5, 9, 13, 2], [1, 7, 3], [4, 4, 4, 4, 4, 4, 4], [9]]
    out = sequence_perplexities(model, seqs, pad_id=0, batch_size=3)
    for seq, (ppl, n) in zip(seqs[:3], out[:3]):
        ids = torch.tensor([seq])
        with torch.no_grad():
            expected = math.exp(model(input_ids=ids, labels=ids).loss.item())
        assert ppl == pytest.approx(expected, rel=1e-4) and n == len(seq) - 1
    assert math.isnan(out[3][0]) and out[3][1] == 0


def test_trainer_step_loss_is_the_global_batch_loss(tmp_path, compose_cfg):
    """Two micro-batches of 2 rows (grad accumulation 2): the logged step loss equals oxa_loss of the 4-row global
    batch, with N_ce = 2 and N_ul = 2."""
    from recipes.sft.data import CompletionCollator
    from recipes.sft.oxa_recipe import OxaTrainer
    from runner.trainer import training_arguments

    cfg = compose_cfg("method=oxa", "train.micro_batch_size=2", "train.grad_accum_steps=2", "train.max_steps=1",
                      "train.lr=1e-9", "train.max_grad_norm=0")
    rnd = random.Random(0)
    rows = []
    for i in range(6):
        ids = [1] + [rnd.randrange(3, 500) for _ in range(rnd.randint(4, 9))]
        rows.append({"input_ids": ids, "labels": [-100, -100] + ids[2:], "loss_type": UL if i >= 4 else CE})
    types = [r["loss_type"] for r in rows]
    model = tiny_model("qwen2")
    collate = CompletionCollator(0)
    first = list(MixedLossTypeSampler(types, 4, 2, seed=0))[:4]
    batch = collate([rows[i] for i in first])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = oxa_loss(logits, batch["labels"], batch["loss_type"], 0.5).loss.item()
    trainer = OxaTrainer(model=model, args=training_arguments(cfg, "fp32", tmp_path, logging_steps=1),
                         train_dataset=rows, data_collator=collate, loss_types=types, ul_weight=0.5, ul_per_batch=2,
                         global_batch_size=4, sampler_seed=0)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h][0]
    assert logged["loss"] == pytest.approx(expected, rel=1e-4)
    assert "ce_loss" in logged and "ul_loss" in logged
