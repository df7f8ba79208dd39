"""Exact resume after SIGKILL, atomic checkpoints under a kill during a save, keep_last_n, and the NaN guard.

Every run goes through the ``run`` console script as a subprocess. A run is stopped at a known point with the
test-only ``RUNNER_TEST_HOLD`` hook (runner/trainer.py: the process announces the point on stderr and sleeps) and then
killed with SIGKILL from here, as a scheduler preempting a job would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from runner import checkpoint
from tests.conftest import REPO, RUN, run_cli

pytestmark = pytest.mark.slow

SMALL = ["model.architecture.hidden_size=32", "model.architecture.intermediate_size=64",
         "model.architecture.num_hidden_layers=2", "model.architecture.vocab_size=512",
         "data.languages=[en,de]", "data.train_size=6", "train.micro_batch_size=2", "train.max_seq_len=128",
         "eval.enabled=false", "train.lr=1e-3", "train.save_steps=2", "train.max_steps=10"]
"""A 53K-parameter LLaMA on 12 rows: 6 steps per epoch, so 10 steps cross an epoch boundary."""
RANDOM = [*SMALL, "train.batching=random", "train.keep_last_n=3"]
GROUPED = [*SMALL, "train.batching=length_grouped", "train.grad_accum_steps=2", "train.micro_batch_size=1",
           "train.logging_steps=3"]
"""The default sampler, with gradient accumulation and a logging period that does not divide the save period (the
loss accumulated since the last log must survive the kill)."""


def _ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _weights(ckpt: Path):
    from safetensors.torch import load_file

    return load_file(str(ckpt / "model.safetensors"))


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _curve(run_dir: Path) -> list[tuple]:
    """(step, loss, grad_norm, lr) of every logged training step."""
    return [(x["step"], x["train/loss"], x.get("train/grad_norm"), x.get("train/lr")) for x in _lines(run_dir)
            if "train/loss" in x]


def _start_held(args: list[str], hold: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "COLUMNS": "200", "RUNNER_TEST_HOLD": hold}
    return subprocess.Popen([RUN, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env)


def _kill_when_held(proc: subprocess.Popen, hold: str, log: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while f"runner-test-hold {hold}" not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, f"the run never reached {hold}: {log.read_text()[-3000:]}"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _assert_same_as_uninterrupted(resumed: Path, full: Path, last: int = 10) -> None:
    a, b = _weights(full / "checkpoints" / f"step-{last}"), _weights(resumed / "checkpoints" / f"step-{last}")
    assert sorted(a) == sorted(b)
    for key in a:
        assert (a[key] == b[key]).all(), key  # bit-identical
    assert _curve(resumed) == _curve(full)
    steps = [x["step"] for x in _lines(resumed) if "train/loss" in x]
    assert steps == sorted(set(steps))  # no duplicate line
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (full, resumed))
    for key in ("train/loss", "train/loss_first", "train/loss_last", "train/steps"):
        assert ma[key] == mb[key], key


def test_sigkill_after_a_checkpoint_or_during_a_save_then_resume_equals_an_uninterrupted_run(tmp_path):
    """One chain of runs, so that the uninterrupted reference is built once whatever the xdist distribution."""
    full = tmp_path / "full"
    _ok(run_cli(*RANDOM, f"hydra.run.dir={full}"))
    _killed_after_a_checkpoint(tmp_path / "after", full)
    _killed_during_a_save(tmp_path / "during", full)


def _killed_after_a_checkpoint(tmp_path: Path, uninterrupted: Path) -> None:
    tmp_path.mkdir()
    run_dir, log = tmp_path / "run", tmp_path / "stderr.txt"
    proc = _start_held([*RANDOM, f"hydra.run.dir={run_dir}"], "step:5", log)
    _kill_when_held(proc, "step:5", log)
    # killed after checkpoint 4 with step 5 already logged: that line must go, and come back exactly once
    assert [s for s, _ in checkpoint.list_checkpoints(run_dir / "checkpoints")] == [2, 4]
    assert [x["step"] for x in _lines(run_dir)] == [1, 2, 3, 4, 5]

    proc = _ok(run_cli(*RANDOM, "resume=true", f"hydra.run.dir={run_dir}"))
    assert "resuming from" in proc.stderr + proc.stdout
    _assert_same_as_uninterrupted(run_dir, uninterrupted)
    assert [x["step"] for x in _lines(run_dir)] == list(range(1, 11))
    # keep_last_n=3 holds across the resume, as in the uninterrupted run
    assert [s for s, _ in checkpoint.list_checkpoints(run_dir / "checkpoints")] == [6, 8, 10]
    assert [s for s, _ in checkpoint.list_checkpoints(uninterrupted / "checkpoints")] == [6, 8, 10]
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert [r["step"] for r in prov["resumes"]] == [4] and "resume=true" in prov["resumes"][0]["argv"]
    time_s = [x["time_s"] for x in _lines(run_dir)]
    assert time_s == sorted(time_s)  # the resumed run's clock continues from the last kept line

    # resumed again from its final checkpoint (as after a kill during the final evaluation): no extra step
    _ok(run_cli(*RANDOM, "resume=true", f"hydra.run.dir={run_dir}"))
    _assert_same_as_uninterrupted(run_dir, uninterrupted)
    assert [x["step"] for x in _lines(run_dir)] == list(range(1, 11))
    assert [s for s, _ in checkpoint.list_checkpoints(run_dir / "checkpoints")] == [6, 8, 10]


def _killed_during_a_save(tmp_path: Path, uninterrupted: Path) -> None:
    tmp_path.mkdir()
    run_dir, log = tmp_path / "run", tmp_path / "stderr.txt"
    proc = _start_held([*RANDOM, f"hydra.run.dir={run_dir}"], "save:4", log)
    _kill_when_held(proc, "save:4", log)
    root = run_dir / "checkpoints"
    half = list(root.glob(".tmp-step-4-*"))
    assert len(half) == 1 and (half[0] / "model.safetensors").exists() and not (half[0] / "optimizer.pt").exists()
    assert not (root / "step-4").exists()
    assert checkpoint.latest(root) == root / "step-2"  # the half-written save is ignored
    whole = sorted(p.name for p in (root / "step-2").iterdir())
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
            "runner_state.json", "config.json"} <= set(whole)
    from transformers import AutoModelForCausalLM  # usable: it loads

    model = AutoModelForCausalLM.from_pretrained(root / "step-2", use_safetensors=True)
    assert sum(p.numel() for p in model.parameters()) == 53_408

    _ok(run_cli(*RANDOM, "resume=true", f"hydra.run.dir={run_dir}"))
    assert not list(root.glob(".tmp-step-*"))  # the leftover was cleaned
    _assert_same_as_uninterrupted(run_dir, uninterrupted)


def test_resume_with_the_length_grouped_sampler_and_grad_accumulation(tmp_path):
    full, run_dir, log = tmp_path / "full", tmp_path / "run", tmp_path / "stderr.txt"
    _ok(run_cli(*GROUPED, f"hydra.run.dir={full}"))
    proc = _start_held([*GROUPED, f"hydra.run.dir={run_dir}"], "step:5", log)
    _kill_when_held(proc, "step:5", log)
    assert [x["step"] for x in _lines(run_dir) if "train/loss" in x] == [1, 3]
    _ok(run_cli(*GROUPED, "resume=true", f"hydra.run.dir={run_dir}"))
    _assert_same_as_uninterrupted(run_dir, full)
    assert [c[0] for c in _curve(run_dir)] == [1, 3, 6, 9]


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    proc = run_cli(*SMALL, "train.lr=1e12", "train.max_grad_norm=0", "train.save_steps=1", "train.max_steps=50",
                   f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("Training error:") and "Traceback" not in proc.stderr
    assert "train.lr" in err
    kept = checkpoint.list_checkpoints(tmp_path / "checkpoints")
    assert kept, err
    import re

    m = re.search(r"at step (\d+)|after step (\d+)", err)
    assert m, err
    bad_step = int(m.group(1) or m.group(2))
    assert kept[-1][0] < bad_step and f"'{kept[-1][1]}'" in err
    import torch

    for tensor in _weights(kept[-1][1]).values():
        assert torch.isfinite(tensor).all()
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "failed"


def test_grpo_on_trls_trainer_resumes_exactly_too(tmp_path):
    """The same mechanism under TRL's GRPOTrainer (RunnerTrainerMixin): the resumed run samples the same completions
    (same lengths, rewards, entropy and KL at every step) and ends with the same weights."""
    from tests.conftest import shared

    # 2 prompts, one per step: the resumed run starts the second epoch from checkpoint 2
    args = ["method=grpo", "model=tiny-qwen2", "data=gsm8k", f"data.path={shared('gsm8k')}", "data.max_samples=2",
            "method.num_generations=4", "method.max_completion_length=16", "method.beta=0.001",
            "hardware.num_threads=1", "eval.enabled=false", "train.save_steps=2", "train.max_steps=4"]
    full, run_dir, log = tmp_path / "full", tmp_path / "run", tmp_path / "stderr.txt"
    _ok(run_cli(*args, f"hydra.run.dir={full}"))
    proc = _start_held([*args, f"hydra.run.dir={run_dir}"], "step:3", log)
    _kill_when_held(proc, "step:3", log)
    _ok(run_cli(*args, "resume=true", f"hydra.run.dir={run_dir}"))
    a, b = _weights(full / "checkpoints" / "step-4"), _weights(run_dir / "checkpoints" / "step-4")
    assert all((a[k] == b[k]).all() for k in a)
    timing = ("time_s", "train/step_time")
    rows_a, rows_b = ([{k: v for k, v in x.items() if k not in timing} for x in _lines(d)] for d in (full, run_dir))
    assert rows_a == rows_b and [x["step"] for x in rows_a] == [1, 2, 3, 4]
    assert "train/completions/mean_length" in rows_a[0] and "train/entropy" in rows_a[0]
