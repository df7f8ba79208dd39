"""The SFT run reuses the rows its plan tokenized (one encoding per run) and reports the training phase's runtime."""

from __future__ import annotations

import pytest

import recipes.sft.data as sft_data
from runner.cli import execute
from runner.config import compose

pytestmark = pytest.mark.slow


def test_training_rows_are_encoded_once_and_runtime_is_reported(tmp_path, monkeypatch):
    calls = []
    original = sft_data.encode_examples

    def counting(examples, *args, **kwargs):
        calls.append(len(examples))
        return original(examples, *args, **kwargs)

    monkeypatch.setattr(sft_data, "encode_examples", counting)
    cfg = compose(["train.max_steps=2", "eval.enabled=false", "train.save_final=false", f"run_dir={tmp_path}"])
    metrics = execute(cfg)
    assert calls == [2816]  # data=arith: 256 rows x 11 languages, encoded by plan() and reused by run()
    assert metrics["train/rows"] == 2816 and metrics["train/steps"] == 2
    assert 0 < metrics["train/runtime_s"] < metrics["time/wall_s"]
