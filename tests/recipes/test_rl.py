"""GRPO with the long-CoT study's variants: the TRL trainer in-process with a deterministic reward, and tiny
end-to-end runs through the real ``run`` path (subprocess)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import run_cli, shared

pytestmark = pytest.mark.slow
PROMPT = "Question: 2+2?\nAnswer:"


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory):
    from runner.config import compose
    from runner.models import load_model

    cfg = compose(["model=tiny-qwen2", f"run_dir={tmp_path_factory.mktemp('run')}"])
    return load_model(cfg.model, cfg.hardware, cfg.cache_dir)


def _trainer(model, tokenizer, tmp_path, reward, samples):
    import datasets
    from trl import GRPOConfig

    from recipes.rl.grpo import StudyGRPOTrainer, StudySettings

    rows = [{"prompt": PROMPT, "answer": "4", "id": "p0"}] * 4
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=8, loss_type="bnpo", beta=0.0, use_cpu=True, report_to="none",
                      temperature=1.0, top_k=0, seed=0, gradient_checkpointing=False, bf16=False)
    trainer = StudyGRPOTrainer(model=model, reward_funcs=[reward], args=args,
                               train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer,
                               study=StudySettings(samples=samples))
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); these tests call the hooks directly
    model.train()
    return trainer, rows


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_negative_only_drops_rows_from_the_token_mean_and_their_gradient(tiny_qwen2, tmp_path):
    model, tokenizer = tiny_qwen2

    def math_correct(prompts, completions, **kwargs):  # deterministic: rollouts 0, 2, 3 of each group are correct
        return [float(i % 4 != 1) for i in range(len(completions))]

    trainer, rows = _trainer(model, tokenizer, tmp_path, math_correct, "negative")
    out = trainer._generate_and_score_completions(rows)
    # group [1, 0, 1, 1]: mean 0.75, unbiased std 0.5 -> A = 0.5 / -1.5, computed on the full group first
    assert out["advantages"].tolist() == pytest.approx([0.5, -1.5, 0.5, 0.5], abs=1e-5)
    kept = out["completion_mask"].sum(dim=1) > 0
    assert kept.tolist() == [False, True, False, False]
    logged = trainer._metrics["train"]
    assert logged["samples_dropped"] == [3.0] and logged["samples_kept"] == [1.0]
    assert logged["zero_adv_fraction"] == [0.0] and logged["correct_fraction"] == [0.75]

    model.zero_grad()
    loss = trainer._compute_loss(model, out)
    loss.backward()
    full = _grads(model)
    # ratio 1 on the first iteration, so the token mean of -A * ratio over the one kept row is exactly 1.5
    assert float(loss.detach()) == pytest.approx(1.5, abs=1e-5)
    assert sum(float(g.abs().sum()) for g in full.values()) > 0

    # the same loss and gradient as the batch with the dropped rows physically removed
    alone = {k: (v[1:2] if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in out.items()}
    alone["completion_mask"] = out["completion_mask"][1:2]
    model.zero_grad()
    loss_alone = trainer._compute_loss(model, alone)
    loss_alone.backward()
    assert float(loss_alone.detach()) == pytest.approx(float(loss.detach()), abs=1e-6)
    for name, g in _grads(model).items():
        torch.testing.assert_close(g, full[name], atol=1e-6, rtol=1e-5)

    # whatever the dropped rows hold, they give no gradient
    changed = dict(out, advantages=torch.tensor([100.0, -1.5, -100.0, 7.0]),
                   completion_ids=torch.where(kept.unsqueeze(1), out["completion_ids"], 3))
    model.zero_grad()
    trainer._compute_loss(model, changed).backward()
    for name, g in _grads(model).items():
        torch.testing.assert_close(g, full[name], atol=1e-6, rtol=1e-5)


def test_a_step_with_no_rollout_kept_leaves_no_gradient(tiny_qwen2, tmp_path):
    model, tokenizer = tiny_qwen2
    pattern = {"values": [1.0, 0.0, 1.0, 1.0]}

    def math_correct(prompts, completions, **kwargs):
        return list(pattern["values"])

    trainer, rows = _trainer(model, tokenizer, tmp_path, math_correct, "positive")
    model.zero_grad()
    loss = trainer.training_step(model, rows)
    assert math.isfinite(float(loss)) and not trainer._no_rows_kept
    assert sum(float(g.abs().sum()) for g in _grads(model).values()) > 0  # 3 positives kept: a real gradient

    pattern["values"] = [0.0] * 4  # nothing correct: positive-only keeps no rollout
    trainer._buffered_inputs = None  # generate a new batch
    loss = trainer.training_step(model, rows)
    assert trainer._no_rows_kept and float(loss) == 0.0
    assert all(p.grad is None for p in model.parameters())  # AdamW will skip every parameter: no update at all
    assert trainer._metrics["train"]["samples_kept"][-1] == 0.0


def _stored(tmp_path):
    """Short correct solutions of the first two GSM8K training problems (answers 72 and 10); the last one is longer
    than the 48-token budget (+ EOS) with the builtin tokenizer and must be skipped."""
    path = tmp_path / "stored.jsonl"
    rows = [{"id": "gsm8k-train-0", "solutions": ["The answer is 72.", "48 + 24 = 72. The answer is 72.",
                                                  "In May she sold 48 / 2 = 24, so 48 + 24 = 72. The answer is 72."]},
            {"id": "gsm8k-train-1", "solutions": ["The answer is 10.", "12 / 60 x 50 = 10. The answer is 10.",
                                                  "She earns 0.2 x 50 = 10. The answer is 10.",
                                                  "She earns 12 / 60 = 0.2 a minute, 0.2 x 50 = 10. The answer is 10."]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


TINY_RL = ["method=grpo", "model=tiny-qwen2", "data=gsm8k", "method.num_generations=4", "train.max_steps=3",
           "hardware.num_threads=1", "eval.max_samples=2", "eval.max_new_tokens=8"]


def _lines(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_grpo_with_injection_length_reward_and_negative_only(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(*TINY_RL, f"data.path={shared('gsm8k')}", "data.max_samples=2", "method.max_completion_length=48",
                   "method.samples=negative",
                   "method.offline_injection.enabled=true", f"method.offline_injection.path={_stored(tmp_path)}",
                   "method.length_reward.enabled=true", "method.length_reward.tau=0.75",
                   "method.length_reward.l_base=4", "method.beta=0", "eval.repeats=2", "eval.temperature=0.6",
                   f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [x for x in _lines(run_dir) if "train/loss" in x]
    assert [x["step"] for x in steps] == [1, 2, 3]
    for x in steps:
        assert math.isfinite(x["train/loss"])
        # the random model solves nothing: all 4 rollouts wrong (<= alpha), 3 stored solutions injected -> 3 of 4
        # correct (>= tau: the length reward applies to them), negative-only keeps the 1 wrong rollout
        assert x["train/correct_fraction_before_injection"] == 0.0
        assert x["train/samples_injected"] == 3.0 and x["train/correct_fraction"] == 0.75
        assert x["train/samples_kept"] == 1.0 and x["train/samples_dropped"] == 3.0
        assert x["train/zero_adv_fraction"] == 0.0 and x["train/response_length_mean"] > 0
        assert x["train/length_bonus_mean"] != 0.0  # the 3 stored solutions have different lengths
        assert x["train/loss"] > 0  # the kept negative has A < 0: the loss -A * ratio is positive
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["train/injection_prompts"] == 2 and m["train/injection_solutions_too_long"] == 1
    assert m["train/steps"] == 3
    assert m["eval/repeats"] == 2 and m["eval/accuracy_std"] >= 0 and 0 <= m["eval/accuracy_mean"] <= 1
    assert (run_dir / "checkpoints" / "step-3" / "model.safetensors").exists()


def test_grpo_plain_with_kl_to_the_reference(tmp_path):
    proc = run_cli(*TINY_RL, f"data.path={shared('gsm8k')}", "data.max_samples=8", "method.beta=0.001",
                   "method.max_completion_length=16", "eval.enabled=false",
                   f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [x for x in _lines(tmp_path) if "train/loss" in x]
    assert len(steps) == 3
    for x in steps:
        assert math.isfinite(x["train/loss"]) and x["train/kl"] >= 0 and "train/samples_injected" not in x
        assert x["train/samples_dropped"] == 0.0 and 0.0 <= x["train/zero_adv_fraction"] <= 1.0
        assert "train/reward_mean" in x and x["train/response_length_mean"] <= 16


def test_grpo_config_and_data_errors_before_any_model(tmp_path, compose_cfg):
    from recipes.rl.recipe import GRPORecipe

    proc = run_cli("method=grpo", "method.num_generations=8", f"hydra.run.dir={tmp_path / 'a'}")
    assert proc.returncode == 1 and "not a multiple of method.num_generations=8" in proc.stderr + proc.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "gsm8k-train-0", "solutions": "The answer is 72."}\n')
    cfg = compose_cfg("method=grpo", "model=tiny-qwen2", "data=gsm8k", f"data.path={shared('gsm8k')}",
                      "data.max_samples=2", "method.offline_injection.enabled=true",
                      f"method.offline_injection.path={bad}")
    plan = GRPORecipe(cfg).plan()  # what a dry-run prints: no weights loaded
    assert any("row 1: 'solutions' must be a list of strings" in p for p in plan.problems)
    bad.write_text('{"id": "gsm8k-train-99", "solutions": ["The answer is 1."]}\n')
    plan = GRPORecipe(cfg).plan()
    assert any("none of the 1 prompts" in p and "gsm8k-train-0" in p for p in plan.problems)
    assert plan.total_params == 1_716_352 and plan.train_rows == 2 and plan.extra["prompts_per_step"] == 1
