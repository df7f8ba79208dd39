"""MRMBench probes, feature extraction and inference-time probing (METHODS.md Part B section 1), against hand values."""

from __future__ import annotations

import json
import math

import pytest
import torch

from recipes.probing.features import (
    cached_features,
    encode_texts,
    extract_features,
    fingerprint,
    pool_hidden,
    right_pad,
)
from recipes.probing.mrmbench import (
    LinearProbe,
    evaluate_probe,
    fit_centroids,
    inference_time_probe,
    probe_loss,
    probe_predict,
    train_probe,
)
from recipes.probing.optim import HeadOptim
from recipes.probing.recipe import state_digest


def tiny_backbone(kind: str = "llama", seed: int = 0):
    """METHODS.md's test backbone: random-init, hidden 32, 2 layers (an ``AutoModel``, no head)."""
    from transformers import AutoConfig, AutoModel

    arch = {"llama": dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128),
            "bert": dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=128)}[kind]
    torch.manual_seed(seed)
    return AutoModel.from_config(AutoConfig.for_model(kind, **arch)).eval()


@pytest.fixture(scope="module")
def tokenizer():
    from runner.tokenizer import train_tokenizer

    return train_tokenizer(512)


# ---- pooling and extraction ----------------------------------------------------------------------------------------


def test_pool_hidden_by_hand():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]],
                           [[5.0, 6.0], [7.0, 8.0], [0.5, 0.5]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool_hidden(hidden, mask, "last_token").tolist() == [[3.0, 4.0], [0.5, 0.5]]
    assert pool_hidden(hidden, mask, "mean").tolist() == [[2.0, 3.0], pytest.approx([12.5 / 3, 14.5 / 3])]
    assert pool_hidden(hidden, mask, "cls").tolist() == [[1.0, 2.0], [5.0, 6.0]]
    with pytest.raises(ValueError, match="right-padded"):
        pool_hidden(hidden, torch.tensor([[0, 1, 1], [1, 1, 1]]), "last_token")


@pytest.mark.parametrize("kind,pooling", [("llama", "last_token"), ("bert", "mean"), ("bert", "last_token")])
def test_padded_batches_equal_unpadded_forward(kind, pooling):
    """(a) the state pooled from a right-padded batch equals the one from each sequence's own unpadded forward."""
    model = tiny_backbone(kind)
    seqs = [[1, 5, 9, 11, 2], [1, 7, 2], [1, 20, 21, 22, 23, 24, 25, 2], [1, 2]]
    padded = extract_features(model, seqs, pad_id=0, pooling=pooling, batch_size=4)
    one_by_one = extract_features(model, seqs, pad_id=0, pooling=pooling, batch_size=1)
    assert padded.shape == (4, 32)
    torch.testing.assert_close(padded, one_by_one, atol=1e-5, rtol=1e-5)
    if pooling == "last_token":
        with torch.no_grad():
            for i, s in enumerate(seqs):
                direct = model(input_ids=torch.tensor([s]))[0][0, -1]
                torch.testing.assert_close(padded[i], direct, atol=1e-5, rtol=1e-5)


def test_right_pad_layout():
    ids, mask = right_pad([[4, 5, 6], [7]], pad_id=0)
    assert ids.tolist() == [[4, 5, 6], [7, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_encode_appends_eos_and_drops_over_length(tokenizer):
    """(d) texts longer than max_seq_len tokens are dropped (never truncated) and counted."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    plain = tokenizer("ab", add_special_tokens=True)["input_ids"]
    assert plain[0] == bos and plain[-1] != eos
    n = len(plain) + 1  # with EOS appended
    enc = encode_texts(["ab", "ab " * 40, "ab"], tokenizer, max_seq_len=n, append_eos=True)
    assert enc.ids[0] == plain + [eos] and enc.ids[2] == enc.ids[0]
    assert enc.ids[1] is None and enc.dropped == 1 and enc.kept == [0, 2] and enc.longest > n
    assert encode_texts(["ab"], tokenizer, max_seq_len=n - 1, append_eos=True).dropped == 1
    assert encode_texts(["ab"], tokenizer, max_seq_len=n - 1, append_eos=False).ids[0] == plain
    # the pad token stays distinct from EOS (MRMBench pads with a dedicated token)
    assert tokenizer.pad_token_id != eos


def test_features_cache_computes_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6.0).reshape(3, 2)

    key = fingerprint(["a", "b", "c"], pooling="mean")
    path = tmp_path / "features" / "x.safetensors"
    first, hit1 = cached_features(path, key, compute)
    second, hit2 = cached_features(path, key, compute)
    assert (hit1, hit2, len(calls)) == (False, True, 1) and torch.equal(first, second)
    other = fingerprint(["a", "b", "c"], pooling="last_token")
    assert other != key and fingerprint(["a", "b", "d"], pooling="mean") != key
    _, hit3 = cached_features(path, other, compute)
    assert not hit3 and len(calls) == 2


# ---- probe -------------------------------------------------------------------------------------------------------


def test_probe_head_has_no_bias_and_paper_shapes():
    """(b) nn.Linear(d, 1, bias=False) for Easy, nn.Linear(d, 3, bias=False) for Hard (stored (out, d))."""
    easy, hard = LinearProbe(32, 2), LinearProbe(32, 3)
    assert easy.linear.bias is None and hard.linear.bias is None
    assert easy.linear.weight.shape == (1, 32) and hard.linear.weight.shape == (3, 32)
    assert easy(torch.zeros(5, 32)).shape == (5, 1) and hard(torch.zeros(5, 32)).shape == (5, 3)


def test_probe_loss_and_prediction_by_hand():
    # BCE at logit 0 is ln 2 whatever the label; at logit 2 with label 1: log(1 + e^-2) = 0.126928
    assert probe_loss(torch.zeros(2, 1), torch.tensor([0, 1]), 2).item() == pytest.approx(math.log(2))
    assert probe_loss(torch.tensor([[2.0]]), torch.tensor([1]), 2).item() == pytest.approx(0.126928, abs=1e-6)
    # cross-entropy over 3 equal logits is ln 3; logits (0, ln 2, 0) with label 1: -log(2/4) = ln 2
    assert probe_loss(torch.zeros(1, 3), torch.tensor([2]), 3).item() == pytest.approx(math.log(3))
    assert probe_loss(torch.tensor([[0.0, math.log(2), 0.0]]), torch.tensor([1]), 3).item() == pytest.approx(
        math.log(2))
    # sigmoid > 0.5 <=> logit > 0 (a logit of exactly 0 is class 0); argmax for 3 classes
    assert probe_predict(torch.tensor([[-0.1], [0.0], [0.3]]), 2).tolist() == [0, 0, 1]
    assert probe_predict(torch.tensor([[0.1, 0.7, 0.2], [3.0, 0.0, 0.0]]), 3).tolist() == [1, 0]


def _blobs(n: int, num_classes: int, d: int = 16, sep: float = 6.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    means = torch.randn(num_classes, d, generator=g) * sep
    return means[labels] + torch.randn(n, d, generator=g), labels


FAST = HeadOptim(lr=5e-2, betas=(0.9, 0.95), weight_decay=0.1, batch_size=64, epochs=10, seed=0)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_separable_task_near_one_and_shuffled_labels_at_chance(num_classes):
    """(c) ~1.0 on linearly separable features; chance on labels shuffled independently of the features."""
    x, y = _blobs(400, num_classes)
    probe, losses = train_probe(x[:300], y[:300], num_classes, FAST)
    acc, _ = evaluate_probe(probe, x[300:], y[300:])
    assert acc >= 0.98 and losses[-1] < losses[0]
    assert len(losses) == 10 * math.ceil(300 / 64)
    g = torch.Generator().manual_seed(1)
    shuffled = y[torch.randperm(400, generator=g)]
    probe, _ = train_probe(x[:300], shuffled[:300], num_classes, FAST)
    acc, _ = evaluate_probe(probe, x[300:], shuffled[300:])
    assert abs(acc - 1 / num_classes) < 0.15


def test_backbone_bit_identical_after_probing():
    """(b) extracting features and training a probe leaves every backbone tensor bit-identical."""
    model = tiny_backbone("llama")
    model.requires_grad_(False)
    before = state_digest(model)
    seqs = [[1, 3 + i % 7, 4 + i % 5, 2] for i in range(24)]
    feats = extract_features(model, seqs, pad_id=0, pooling="last_token", batch_size=8)
    train_probe(feats, torch.arange(24) % 2, 2, HeadOptim(lr=1e-2, batch_size=8, epochs=3))
    assert state_digest(model) == before
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-7
    assert state_digest(model) != before


def test_head_optim_from_train_section(compose_cfg):
    cfg = compose_cfg("experiment=mrmbench-easy", "model=tiny-llama")
    opt = HeadOptim.from_cfg(cfg)
    assert (opt.lr, opt.betas, opt.weight_decay, opt.batch_size, opt.scheduler, opt.warmup_ratio) == (
        5e-5, (0.9, 0.95), 0.1, 128, "cosine", 0.0)
    assert opt.seed == 42 and opt.steps(13_391) == 105 and opt.steps(0) == 0


def test_cosine_schedule_reaches_zero():
    lrs = []
    probe = LinearProbe(4, 2)
    from recipes.probing.optim import fit

    fit(probe, 40, lambda idx: probe(torch.ones(len(idx), 4)).sum(),
        HeadOptim(lr=1.0, batch_size=10, epochs=1, scheduler="cosine"), lambda s, loss, lr: lrs.append(lr))
    # 4 steps of cosine decay from 1.0 with no warm-up: 0.5 * (1 + cos(pi * s / 4)) for s = 0..3
    assert lrs == pytest.approx([1.0, 0.853553, 0.5, 0.146447], abs=1e-6)


# ---- inference-time probing ----------------------------------------------------------------------------------------


def test_centroids_and_distances_by_hand():
    feats = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [10.0, 12.0]])
    cents = fit_centroids(feats, torch.tensor([0, 0, 1, 1]))
    assert cents[0].tolist() == [[1.0, 0.0]] and cents[1].tolist() == [[10.0, 11.0]]
    res = inference_time_probe(torch.tensor([[4.0, 4.0], [10.0, 14.0]]), {"dim": cents}, d_tau=4.0)
    # ||(4,4)-(1,0)|| = 5, ||(4,4)-(10,11)|| = sqrt(85); ||(10,14)-(10,11)|| = 3
    assert res.distances[0, 0].tolist() == pytest.approx([5.0, math.sqrt(85)])
    assert res.min_distance.tolist() == pytest.approx([5.0, 3.0])
    assert res.nearest_label.tolist() == [0, 1] and res.keep.tolist() == [False, True]
    assert res.discard_rate == 0.5
    assert inference_time_probe(torch.tensor([[4.0, 4.0]]), {"dim": cents}, d_tau=None).discard_rate == 0.0


def test_kmeans_centroids_find_sub_clusters():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 2, generator=g) * 0.1 + torch.tensor([-5.0, 0.0])
    b = torch.randn(30, 2, generator=g) * 0.1 + torch.tensor([5.0, 0.0])
    cents = fit_centroids(torch.cat([a, b]), torch.zeros(60, dtype=torch.long), num_clusters=2, seed=0)[0]
    xs = sorted(cents[:, 0].tolist())
    assert xs[0] == pytest.approx(-5.0, abs=0.1) and xs[1] == pytest.approx(5.0, abs=0.1)
    with pytest.raises(ValueError, match="fewer than 3 clusters"):
        fit_centroids(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), num_clusters=3)


def test_itp_discard_rate_monotone_and_far_points_discarded():
    """(e) two Gaussian blobs: discard rate non-increasing in d_tau; points far from every centroid discarded."""
    g = torch.Generator().manual_seed(0)
    d = 8
    blob0, blob1 = torch.randn(100, d, generator=g), torch.randn(100, d, generator=g) + 8.0
    cents = {"harmlessness": fit_centroids(torch.cat([blob0, blob1]), torch.tensor([0] * 100 + [1] * 100))}
    near = torch.cat([torch.randn(50, d, generator=g), torch.randn(50, d, generator=g) + 8.0])
    far = torch.randn(20, d, generator=g) + 100.0
    h = torch.cat([near, far])
    rates = [inference_time_probe(h, cents, tau).discard_rate for tau in (0.5, 1, 2, 3, 4, 6, 10, 200, 400)]
    assert all(a >= b for a, b in zip(rates, rates[1:])) and rates[0] == 1.0 and rates[-1] == 0.0
    res = inference_time_probe(h, cents, d_tau=6.0)
    assert not res.keep[100:].any() and res.keep[:100].float().mean() > 0.95
    assert res.nearest_label[:50].eq(0).all() and res.nearest_label[50:100].eq(1).all()


def test_itp_names_the_dimension_a_sample_leans_on():
    cents = {"helpfulness": {0: torch.tensor([[0.0, 0.0]]), 1: torch.tensor([[1.0, 0.0]])},
             "verbosity": {0: torch.tensor([[0.0, 5.0]]), 1: torch.tensor([[0.0, 9.0]])}}
    res = inference_time_probe(torch.tensor([[0.9, 0.1], [0.0, 8.0]]), cents, d_tau=None)
    assert [res.dimensions[i] for i in res.nearest_dim.tolist()] == ["helpfulness", "verbosity"]
    assert res.nearest_label.tolist() == [1, 1]


def test_predictions_are_json_serialisable():
    res = inference_time_probe(torch.zeros(1, 2), {"a": {0: torch.ones(1, 2)}}, d_tau=1.0)
    assert json.dumps({"d": res.distances[0].tolist(), "keep": bool(res.keep[0])})
