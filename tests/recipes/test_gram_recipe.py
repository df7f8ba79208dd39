"""GRAM end to end through the real ``run`` path (subprocess): both stages on HH-RLHF pairs, then stage 2 alone from
the stage-1 checkpoint of that run."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import run_cli, shared

pytestmark = pytest.mark.slow

# the judge prompt alone is ~680 tokens with the project's tokenizer (trained on arithmetic word problems, it splits
# English finely): the tiny model gets a 2,048-token context for HH-RLHF dialogues.
TINY = ["model=tiny-qwen2", "model.architecture.max_position_embeddings=2048", "hardware.num_threads=1",
        "method.use_chat_template=true", "train.max_seq_len=2048", "train.micro_batch_size=2",
        "data=hh_rlhf", f"data.path={shared('hh_rlhf')}", "data.train_split=helpful-base/test",
        "data.eval_split=harmless-base/test", "data.max_samples=4", "eval.max_samples=4"]


def test_both_stages_then_stage2_alone_from_the_stage1_checkpoint(tmp_path):
    """One test, so that the two-stage run is built once whatever the xdist distribution."""
    d = tmp_path / "all"
    proc = run_cli("method=gram", "train.max_steps=2", *TINY, f"hydra.run.dir={d}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((d / "metrics.json").read_text())
    for stage in (1, 2):
        assert m[f"train/stage{stage}/steps"] == 2 and math.isfinite(m[f"train/stage{stage}/loss"])
        assert (d / "checkpoints" / f"stage{stage}" / "step-2" / "model.safetensors").exists()
    assert m["train/stage1/rows"] + m["train/stage1/dropped_rows"] == 8  # 4 pairs x both orders
    # stage 2's loss is a two-class smoothed CE: near ln 2 for an untrained judge, far below stage 1's LM loss
    assert 0.3 < m["train/stage2/loss"] < 1.5 < m["train/stage1/loss"]
    assert m["eval/pairs"] + m["eval/skipped_pairs"] == 4 and 0.0 <= m["eval/pairwise_accuracy"] <= 1.0
    preds = [json.loads(x) for x in (d / "predictions.jsonl").read_text().splitlines()]
    scored = [p for p in preds if not p["skipped"]]
    assert len(preds) == 4 and all(p["score_chosen"] + p["score_rejected"] == pytest.approx(1.0) for p in scored)
    assert m["eval/pairwise_accuracy"] == pytest.approx(sum(p["correct"] for p in scored) / len(scored))
    logged = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in logged if "train/stage1/loss" in x] == [1, 2]
    assert [x["step"] for x in logged if "train/stage2/loss" in x] == [1, 2]

    alone = tmp_path / "alone"
    proc = run_cli("method=gram", "method.stage=2", f"method.init_from={d}", "train.max_steps=1",
                   "eval.enabled=false", *TINY, f"hydra.run.dir={alone}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((alone / "metrics.json").read_text())
    assert m["train/init_from"] == str(d / "checkpoints" / "stage1" / "step-2")
    assert m["train/stage2/steps"] == 1 and "train/stage1/steps" not in m
    assert not (alone / "checkpoints" / "stage1").exists() and "eval/pairwise_accuracy" not in m


def test_gram_on_question_answer_data_is_a_clear_error(tmp_path):
    proc = run_cli("method=gram", "data=gsm8k", f"data.path={shared('gsm8k')}", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "GRAM trains on preference pairs" in proc.stderr and "data=hh_rlhf" in proc.stderr
