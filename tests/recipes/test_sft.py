"""One tiny end-to-end run per SFT method through the real ``run`` path (subprocess)."""

from __future__ import annotations

import json
import math

import pytest
from safetensors.torch import load_file

from tests.conftest import run_cli, shared

pytestmark = pytest.mark.slow
FAST_EVAL = ["eval.max_samples=2", "eval.max_new_tokens=8", "eval.batch_size=16"]


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def test_sft_trains_and_writes_the_run_dir(tmp_path):
    proc = run_cli("method=sft", "train.max_steps=20", *FAST_EVAL, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = _metrics(tmp_path)
    assert math.isfinite(m["train/loss"]) and m["train/steps"] == 20
    assert m["train/trainable_params"] == m["train/total_params"] == 2_107_520
    assert m["train/loss_last"] < m["train/loss_first"]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "train/loss" in x] == list(range(1, 21))
    config = (tmp_path / "config.yaml").read_text()
    assert "${" not in config and "run_dir: " + str(tmp_path) in config
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["packages"]["torch"].startswith("2.") and "train.max_steps=20" in prov["argv"]
    ckpt = tmp_path / "checkpoints" / "step-20"
    assert (ckpt / "model.safetensors").exists() and not list(ckpt.glob("pytorch_model*"))
    assert "eval/accuracy/de" in m and 0.0 <= m["eval/accuracy"] <= 1.0
    preds = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 22 and set(preds[0]) >= {"prompt", "output", "extracted", "gold", "correct"}
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "completed"


def test_slam_on_mgsm_reports_every_language(tmp_path):
    proc = run_cli("method=slam", "data=mgsm", f"data.path={shared('mgsm')}", "train.max_steps=4",
                   "train.max_seq_len=1024", *FAST_EVAL, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = _metrics(tmp_path)
    langs = ["bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh"]
    assert sorted(k.split("/")[-1] for k in m if k.startswith("eval/accuracy/")) == langs
    assert m["eval/accuracy"] == pytest.approx(sum(m[f"eval/accuracy/{x}"] for x in langs) / 11)
    # tiny-llama: 6 layers x (up + down) x 128 x 344
    assert m["train/trainable_params"] == 6 * 2 * 128 * 344 == 528_384
    weights = load_file(str(tmp_path / "checkpoints" / "step-4" / "model.safetensors"))
    assert "model.layers.0.mlp.up_proj.weight" in weights


def test_lora_trains_only_adapters(tmp_path):
    proc = run_cli("method=lora", "method.lora_r=8", "train.max_steps=3", "eval.enabled=false",
                   f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = _metrics(tmp_path)
    # r x (in + out) per adapted Linear(128, 128): 4 projections x 8 layers
    assert m["train/trainable_params"] == 8 * (128 + 128) * 4 * 8 == 65_536
    assert m["train/total_params"] == 2_107_520


def test_slam_auto_layers_writes_the_statistic(tmp_path):
    proc = run_cli("method=slam", "method.layers=auto", "method.auto_num_layers=3", "method.analysis_samples=4",
                   "train.max_steps=2", "eval.enabled=false", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads((tmp_path / "slam_layers.json").read_text())
    assert len(stats["msd"]) == 8 and len(stats["chosen_layers"]) == 3 and len(stats["languages"]) == 11
    ranked = sorted(range(8), key=lambda i: (-stats["msd"][i], i))[:3]
    assert stats["chosen_layers"] == sorted(ranked)
    assert _metrics(tmp_path)["train/trainable_params"] == 3 * 2 * 128 * 344


def test_chat_template_and_qwen2(tmp_path):
    proc = run_cli("model=tiny-qwen2", "method=slam", "method.use_chat_template=true", "train.max_steps=2",
                   *FAST_EVAL, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    pred = json.loads((tmp_path / "predictions.jsonl").read_text().splitlines()[0])
    assert pred["prompt"].startswith("<|im_start|>user\nQuestion:") and pred["prompt"].endswith("assistant\n")


def test_chat_template_asked_but_absent_is_a_clear_error(tmp_path):
    proc = run_cli("model=tiny-llama", "method.use_chat_template=true", "train.max_steps=2",
                   f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1 and "no chat template" in proc.stderr and "Traceback" not in proc.stderr


def test_evaluation_only_on_msvamp(tmp_path):
    proc = run_cli("data=msvamp", f"data.path={shared('msvamp')}", "data.languages=[de,zh]", "train.max_steps=0",
                   *FAST_EVAL, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = _metrics(tmp_path)
    assert set(k for k in m if k.startswith("eval/accuracy")) == {"eval/accuracy", "eval/accuracy/de",
                                                                   "eval/accuracy/zh"}
    assert not (tmp_path / "checkpoints").exists()


def test_sampling_evaluation_reports_both_pass_at_k_keys_on_math500(tmp_path):
    proc = run_cli("model=tiny-qwen2", "hardware.num_threads=1", "data=math500", f"data.path={shared('math500')}",
                   "train.max_steps=0", "eval.num_samples=4", "eval.pass_at_k=[1,4]", "eval.temperature=0.6",
                   "eval.top_p=0.95", "eval.max_samples=3", "eval.max_new_tokens=8", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = _metrics(tmp_path)
    for key in ("eval/pass@1", "eval/pass@4", "eval/pass@1_any", "eval/pass@4_any", "eval/pass@4/en"):
        assert 0.0 <= m[key] <= 1.0, key
    preds = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 12 and sorted({p["sample"] for p in preds}) == [0, 1, 2, 3]
    assert len({p["output"] for p in preds if p["id"] == preds[0]["id"]}) > 1  # sampled, not greedy
    by_id = {}
    for p in preds:
        by_id.setdefault(p["id"], []).append(p["correct"])
    assert m["eval/pass@4_any"] == pytest.approx(sum(any(v) for v in by_id.values()) / 3)
    assert m["eval/pass@1"] == pytest.approx(m["eval/accuracy"])
    assert preds[0]["gold"] == "\\left( 3, \\frac{\\pi}{2} \\right)"


def test_padding_free_batching_trains_as_padded_batches_do(tmp_path):
    """train.padding_free (the default) flattens each micro-batch; the per-step losses are the padded run's."""
    losses = {}
    for flag in ("true", "false"):
        run_dir = tmp_path / flag
        proc = run_cli("method=sft", "train.max_steps=6", "train.micro_batch_size=4", "eval.enabled=false",
                       "train.save_final=false", f"train.padding_free={flag}", f"hydra.run.dir={run_dir}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[flag] = [x["train/loss"] for x in lines if "train/loss" in x]
    assert len(losses["true"]) == 6
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)
