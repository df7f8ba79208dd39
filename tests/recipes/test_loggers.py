"""Trackers: wandb offline without an API key (no network) and TensorBoard event files; periodic evaluation."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow
SMALL = ["train.max_steps=4", "train.logging_steps=1", "eval.max_samples=1", "eval.max_new_tokens=4",
         "data.languages=[en,de]"]


def test_wandb_offline_without_api_key(tmp_path):
    proc = run_cli("logger=wandb", *SMALL, f"hydra.run.dir={tmp_path}",
                   env={"WANDB_API_KEY": None, "WANDB_MODE": None, "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert json.loads((tmp_path / "metrics.json").read_text())["train/steps"] == 4


def test_tensorboard_writes_events(tmp_path):
    proc = run_cli("logger=tensorboard", *SMALL, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]


def test_periodic_evaluation_every_eval_steps(tmp_path):
    proc = run_cli("train.eval_steps=2", *SMALL, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "eval/accuracy" in x] == [2]  # step 4 is the final evaluation
    assert (tmp_path / "predictions-step-2.jsonl").exists() and (tmp_path / "predictions.jsonl").exists()
    assert "eval/accuracy/de" in json.loads((tmp_path / "metrics.json").read_text())
