"""Padding-free batching (runner/padding_free.py): a flattened batch gives the padded batch's loss and gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from recipes.sft.data import CompletionCollator
from runner import padding_free


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).eval()


def _rows() -> list[dict]:
    g = torch.Generator().manual_seed(1)
    rows = []
    for n, prompt in ((6, 2), (11, 4), (3, 1)):
        ids = torch.randint(1, 97, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def test_collator_flattens_without_padding():
    batch = padding_free.collator()(_rows())
    assert batch["input_ids"].shape == (1, 20)  # 6 + 11 + 3 tokens, none of them padding
    assert batch["cu_seq_lens_q"].tolist() == [0, 6, 17, 20]
    assert batch["position_ids"][0, 6:9].tolist() == [0, 1, 2]  # positions restart with every row
    # the labels the loss sees: (6-2) + (11-4) + (3-1) = 13 completion tokens, as with padding
    assert int((batch["labels"] != -100).sum()) == 13 == int((CompletionCollator(0)(_rows())["labels"] != -100).sum())


def test_flattened_loss_and_gradients_equal_padded():
    model = _model()
    padded = model(**CompletionCollator(0)(_rows())).loss
    padded.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with padding_free.attention(model):
        flat = model(**padding_free.collator()(_rows())).loss
        flat.backward()
    assert flat.item() == pytest.approx(padded.item(), rel=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6)
    assert model.config._attn_implementation == "sdpa"  # restored after the block


def test_each_sequence_attends_only_to_itself():
    """The logits of a row inside the flattened batch are those of the row run alone (no cross-row attention)."""
    model = _model()
    rows = _rows()
    with torch.no_grad(), padding_free.attention(model):
        logits = model(**padding_free.collator()(rows)).logits[0]
    with torch.no_grad():
        alone = model(torch.tensor([rows[1]["input_ids"]])).logits[0]
    torch.testing.assert_close(logits[6:17], alone, rtol=1e-4, atol=1e-5)


def test_generation_inside_the_block_uses_the_padding_mask():
    model = _model()
    prompts = torch.tensor([[0, 0, 5, 6], [1, 2, 3, 4]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    ref = model.generate(prompts, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
    with padding_free.attention(model):
        out = model.generate(prompts, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert torch.equal(out, ref)


def test_refuses_a_batch_that_does_not_match_its_offsets():
    model = _model()
    q = torch.zeros(1, 4, 5, 8)
    with pytest.raises(ValueError, match="cu_seq_lens_q"):
        padding_free.varlen_sdpa_attention(model.model.layers[0].self_attn, q, q[:, :2], q[:, :2], None,
                                           cu_seq_lens_q=torch.tensor([0, 3, 7]))


def test_which_attention_implementations_train_flattened():
    model = _model()
    assert padding_free.applies(model)
    model.config._attn_implementation = "flash_attention_2"  # varlen natively: nothing to switch
    assert padding_free.applies(model)
    with padding_free.attention(model):
        assert model.config._attn_implementation == "flash_attention_2"
    model.set_attn_implementation("eager")
    assert not padding_free.applies(model)
    with pytest.raises(ValueError, match="eager"):
        with padding_free.attention(model):
            pass


def test_a_row_longer_than_a_sliding_window_is_refused():
    model = _model()
    q = torch.zeros(1, 4, 7, 8)
    attn = model.model.layers[0].self_attn
    out, _ = padding_free.varlen_sdpa_attention(attn, q, q[:, :2], q[:, :2], None,
                                                cu_seq_lens_q=torch.tensor([0, 3, 7]), sliding_window=4)
    assert out.shape == (1, 7, 4, 8)  # rows of 3 and 4 tokens fit a 4-token window
    with pytest.raises(ValueError, match="sliding window of 3"):
        padding_free.varlen_sdpa_attention(attn, q, q[:, :2], q[:, :2], None,
                                           cu_seq_lens_q=torch.tensor([0, 3, 7]), sliding_window=3)
