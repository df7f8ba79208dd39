"""The runner's completion-only SFT batch equals TRL ``SFTTrainer``'s: same ids, same labels, same loss.

Benchmark 2 (``bench/throughput.py``) compares the runner's training speed with TRL's on GSM8K; the comparison is
only fair if both train on the same tokens with the same loss. Here both encode the same GSM8K rows (the runner:
``encode_examples`` + ``CompletionCollator``; TRL: its own dataset preparation + ``DataCollatorForLanguageModeling``)
and both trainers compute the loss of that batch on the same tiny-llama; the runner's default padding-free batch of
the same rows (``runner/padding_free.py``) gives that loss too.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recipes.sft.data import IGNORE_INDEX, CompletionCollator, encode_examples
from runner import padding_free
from runner.config import compose
from runner.data import load_split, render
from runner.models import load_model
from runner.trainer import RunnerTrainer, training_arguments
from tests.conftest import shared

pytestmark = pytest.mark.slow  # imports TRL and datasets: several seconds


def test_runner_and_trl_build_the_same_batch_and_loss(tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    cfg = compose(["data=gsm8k", f"data.path={shared('gsm8k')}", "train.max_seq_len=1024", f"run_dir={tmp_path}"])
    examples = load_split(cfg.data, "train", max_total=4)
    model, tok = load_model(cfg.model, cfg.hardware, cfg.cache_dir)
    runner_rows = encode_examples(examples, tok, cfg.data, False, cfg.train.max_seq_len).rows
    ours = CompletionCollator(tok.pad_token_id)(runner_rows)

    pairs = [render(ex, cfg.data) for ex in examples]
    trl = SFTTrainer(model=model, processing_class=tok,
                     train_dataset=Dataset.from_list([{"prompt": p, "completion": c} for p, c in pairs]),
                     args=SFTConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False, report_to="none",
                                    gradient_checkpointing=False))
    theirs = trl.data_collator([trl.train_dataset[i] for i in range(len(pairs))])

    for key in ("input_ids", "labels", "attention_mask"):
        assert torch.equal(ours[key], theirs[key]), key
    # completion-only: each row's labelled tokens are exactly its completion's tokens and the EOS
    for (prompt, completion), labels in zip(pairs, ours["labels"]):
        n_prompt = len(tok(prompt)["input_ids"])
        n_completion = len(tok(completion, add_special_tokens=False)["input_ids"]) + 1
        assert (labels[:n_prompt] == IGNORE_INDEX).all()
        assert int((labels != IGNORE_INDEX).sum()) == n_completion

    model.eval()  # no dropout either way; the same weights for all three losses
    with torch.no_grad():
        ours_loss = RunnerTrainer(model=model, args=training_arguments(cfg, "fp32", tmp_path / "ckpt"),
                                  data_collator=CompletionCollator(tok.pad_token_id)).compute_loss(model, dict(ours))
        trl_loss = trl.compute_loss(model, dict(theirs))
        logits = model(input_ids=ours["input_ids"], attention_mask=ours["attention_mask"]).logits
        shifted = ours["labels"][:, 1:]
        keep = shifted != IGNORE_INDEX
        by_hand = F.cross_entropy(logits[:, :-1][keep], shifted[keep])
        flat = padding_free.collator()(runner_rows)  # the runner's default batching: same rows, no padding
        assert int((flat["labels"] != IGNORE_INDEX).sum()) == int(keep.sum())
        with padding_free.attention(model):
            flat_loss = model(**flat).loss
    assert ours_loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert flat_loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert trl_loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
