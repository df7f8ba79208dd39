"""Completion-only masking, EOS learnt even when pad == eos, over-length rows dropped, padding."""

from __future__ import annotations

import pytest
import torch

from recipes.sft.data import IGNORE_INDEX, CompletionCollator, encode_examples, encode_pair, prompt_text
from runner.data import Example
from runner.errors import ModelError
from runner.models import load_model


@pytest.fixture(scope="module")
def tok():
    from runner.config import compose

    cfg = compose(["run_dir=/tmp/unused"])
    return load_model(cfg.model, cfg.hardware, cfg.cache_dir)[1]


def test_labels_cover_the_completion_and_eos_only(tok):
    enc = encode_pair("Question: 2+3?\nAnswer:", " 5", tok, use_chat_template=False)
    p_ids = tok("Question: 2+3?\nAnswer:")["input_ids"]
    c_ids = tok(" 5", add_special_tokens=False)["input_ids"]
    assert enc["input_ids"] == p_ids + c_ids + [tok.eos_token_id]
    assert enc["labels"] == [IGNORE_INDEX] * len(p_ids) + c_ids + [tok.eos_token_id]


def test_eos_stays_in_labels_when_pad_equals_eos(tok):
    tok = type(tok).from_pretrained(tok.name_or_path)
    tok.pad_token = tok.eos_token
    assert tok.pad_token_id == tok.eos_token_id
    rows = [encode_pair("Q: a", " 1", tok, False), encode_pair("Q: a much longer prompt here", " 22", tok, False)]
    batch = CompletionCollator(tok.pad_token_id)(rows)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        assert batch["labels"][i, n - 1] == tok.eos_token_id  # the real EOS is learnt
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()  # padding (same id) is not
        assert batch["attention_mask"][i].sum() == n
    assert batch["input_ids"].shape == batch["labels"].shape == (2, max(len(r["input_ids"]) for r in rows))


def test_chat_template_used_when_asked(tok):
    with pytest.raises(ModelError, match="no chat template"):
        prompt_text("hi", tok, use_chat_template=True)
    tok = type(tok).from_pretrained(tok.name_or_path)
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}" \
                        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    text = prompt_text("hi", tok, use_chat_template=True)
    assert text == "<|im_start|>hi<|im_end|><|im_start|>assistant\n"
    enc = encode_pair("hi", " ok", tok, use_chat_template=True)
    assert enc["input_ids"][0] != tok.bos_token_id  # the template text, no extra BOS


def test_over_length_rows_are_dropped_and_counted(tok, compose_cfg):
    data_cfg = compose_cfg().data
    rows = [Example("a", "1+1?", "2", "2"), Example("b", "a very long question " * 30, "2", "2")]
    out = encode_examples(rows, tok, data_cfg, False, max_seq_len=40)
    assert len(out.rows) == 1 and out.dropped == 1 and out.max_len > 40


def test_collator_pads_right_with_ignore_labels():
    batch = CompletionCollator(pad_token_id=9)([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
                                                {"input_ids": [4], "labels": [4]}])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["input_ids"].dtype == torch.long
