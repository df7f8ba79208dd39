"""The long-CoT study's GRPO mathematics against hand-computed values (METHODS.md Part A §4), the rewards, the config
checks, the stored-solutions reader, and repeated evaluation."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from recipes.rl.data import read_stored_solutions, solutions_by_id
from recipes.rl.rewards import REWARDS, answer_format, get_reward, is_math_correct, math_correct, register_reward
from recipes.rl.variants import (
    group_advantages,
    injection_slots,
    keep_mask,
    relative_length_bonus,
    zero_advantage_fraction,
)
from runner.data import Example
from runner.errors import ConfigError, DataError

# The METHODS.md group: 8 rollouts, 6 correct. mean 0.75; unbiased std sqrt((6 * 0.25^2 + 2 * 0.75^2) / 7)
# = sqrt(1.5 / 7) = 0.46291; A+ = 0.25 / 0.46291 = 0.5401; A- = -0.75 / 0.46291 = -1.6202.
GROUP = torch.tensor([1.0, 1, 1, 1, 1, 1, 0, 0])


def test_group_advantages_hand_values():
    adv = group_advantages(GROUP, 8)
    assert adv[:6].tolist() == pytest.approx([0.5401] * 6, abs=1e-4)
    assert adv[6:].tolist() == pytest.approx([-1.6202] * 2, abs=1e-4)
    # eps 1e-6 on torch's unbiased std, not TRL's 1e-4 (which would give 0.53995) nor the biased std (0.57735)
    assert float(adv[0]) == pytest.approx(0.25 / (math.sqrt(1.5 / 7) + 1e-6), rel=1e-6)


def test_group_advantages_per_group_and_zero_std_groups():
    rewards = torch.cat([GROUP, torch.ones(8), torch.zeros(8)])
    adv = group_advantages(rewards, 8)
    assert adv[:8].tolist() == pytest.approx(group_advantages(GROUP, 8).tolist())
    assert adv[8:].tolist() == [0.0] * 16  # all-correct and all-wrong groups: exactly zero
    assert zero_advantage_fraction(adv) == pytest.approx(16 / 24)
    with pytest.raises(ValueError, match="multiple of the group size 8"):
        group_advantages(torch.ones(12), 8)


def test_negative_only_and_positive_only_keep_the_full_group_advantages():
    adv = group_advantages(GROUP, 8)
    correct = GROUP.bool()
    neg = keep_mask(correct, "negative")
    assert neg.tolist() == [False] * 6 + [True] * 2
    assert adv[neg].tolist() == pytest.approx([-1.6202, -1.6202], abs=1e-4)  # not renormalised after dropping
    pos = keep_mask(correct, "positive")
    assert int(pos.sum()) == 6 and adv[pos].tolist() == pytest.approx([0.5401] * 6, abs=1e-4)
    assert keep_mask(correct, "all").all()
    with pytest.raises(ConfigError, match="method.samples"):
        keep_mask(correct, "both")


def test_relative_length_bonus_hand_values():
    # 6 correct of 8 (share 0.75 >= tau): mean correct length 7000 / 6 = 1166.7; (1166.7 - L) / 500 clipped to
    # [-0.5, 1]: 1000 -> 0.333, 1500 -> -0.667 -> -0.5, 2000 -> -0.5, 500 -> 1.333 -> 1.0; incorrect rollouts 0.
    lengths = torch.tensor([1000, 1500, 2000, 500, 1000, 1000, 3000, 100])
    bonus = relative_length_bonus(GROUP.bool(), lengths, 8, tau=0.75, l_base=500, lower=-0.5, upper=1.0)
    assert bonus.tolist() == pytest.approx([0.3333, -0.5, -0.5, 1.0, 0.3333, 0.3333, 0.0, 0.0], abs=1e-4)
    # 5 of 8 correct (0.625 < tau): no bonus at all
    five = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0]).bool()
    assert relative_length_bonus(five, lengths, 8, 0.75, 500, -0.5, 1.0).tolist() == [0.0] * 8


def test_length_bonus_gives_all_correct_groups_a_signal():
    lengths = torch.tensor([100, 300, 200, 200])
    bonus = relative_length_bonus(torch.ones(4).bool(), lengths, 4, tau=0.5, l_base=100, lower=-0.5, upper=0.5)
    assert bonus.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0])  # mean 200
    adv = group_advantages(torch.ones(4) + bonus, 4)
    assert adv[0] > 0 > adv[1] and adv[2] == adv[3] == 0  # the shortest is pushed up, the longest down


def test_injection_slots_hand_cases():
    one_of_16 = [True] + [False] * 15
    slots = injection_slots(one_of_16, num_stored=3, alpha=0.125)
    assert slots == [1, 2, 3]  # 3 incorrect rollouts replaced...
    after = [True if i in slots else c for i, c in enumerate(one_of_16)]
    assert sum(after) == 4  # ...so the group has 4 correct
    assert injection_slots([True] * 3 + [False] * 13, num_stored=3, alpha=0.125) == []  # 3/16 > alpha: untouched
    assert injection_slots([True] * 2 + [False] * 14, num_stored=3, alpha=0.125) == [2, 3, 4]  # 2/16 == alpha
    assert injection_slots([False] * 16, num_stored=5, alpha=0.125, max_inject=2) == [0, 1]
    assert injection_slots([False] * 4, num_stored=0, alpha=0.125) == []
    assert injection_slots([False, False], num_stored=9, alpha=0.125) == [0, 1]  # at most #incorrect


def test_math_correct_uses_math_verify_against_the_gold_answer():
    completions = [" 24 clips in May. The answer is 72.", r" so \boxed{72}", " The answer is 71.", " 1,234",
                   [{"role": "assistant", "content": "The answer is 72"}], ""]
    golds = ["72", "72", "72", "1234", "72", "72"]
    assert math_correct([""] * 6, completions, answer=golds) == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    assert is_math_correct("The answer is 18. Question: 5 apples", "18")  # the anchor wins over the last number
    assert is_math_correct("$18.00", "18") and not is_math_correct("garbage", "18")
    with pytest.raises(ConfigError, match="answer"):
        math_correct(["p"], ["c"])


def test_answer_format_and_registry():
    assert answer_format([""] * 4, [r"\boxed{3}", "The answer is 4.", "the final answer is: $5", "it is 4"]) == [
        1.0, 1.0, 1.0, 0.0]
    assert get_reward("math_correct") is math_correct
    with pytest.raises(ConfigError, match="valid rewards: answer_format, gram, math_correct"):
        get_reward("nope")
    try:  # a lazy import string resolves on first use, under the registered name (TRL logs rewards/<name>/mean)
        register_reward("fmt_lazy", "recipes.rl.rewards:answer_format")
        func = get_reward("fmt_lazy")
        assert func.__name__ == "fmt_lazy" and func([""], ["The answer is 1"]) == [1.0]
        register_reward("missing_lazy", "recipes.sft.not_there:readout")  # e.g. GRAM before its module exists
        with pytest.raises(ConfigError, match="cannot be imported"):
            get_reward("missing_lazy")
        with pytest.raises(ValueError, match="already registered"):
            register_reward("math_correct", answer_format)
    finally:
        REWARDS.pop("fmt_lazy", None)
        REWARDS.pop("missing_lazy", None)


def test_stored_solutions_reader(tmp_path):
    path = tmp_path / "stored.jsonl"
    path.write_text(json.dumps({"id": "gsm8k-train-0", "solutions": ["a", "b"]}) + "\n"
                    + json.dumps({"question": "Q1?", "solution": "c"}) + "\n"
                    + json.dumps({"id": "gsm8k-train-0", "solutions": ["d", " "]}) + "\n")
    table = read_stored_solutions(path)
    assert table == {"id:gsm8k-train-0": ["a", "b", "d"], "question:Q1?": ["c"]}
    examples = [Example("gsm8k-train-0", "Q0?", "", "1"), Example("gsm8k-train-1", "Q1?", "", "2"),
                Example("gsm8k-train-2", "Q2?", "", "3")]
    assert solutions_by_id(examples, table) == {"gsm8k-train-0": ["a", "b", "d"], "gsm8k-train-1": ["c"]}
    path.write_text(json.dumps({"id": "x", "solutions": "not a list"}) + "\n")
    with pytest.raises(DataError, match="row 1: 'solutions' must be a list"):
        read_stored_solutions(path)
    path.write_text(json.dumps({"solutions": ["a"]}) + "\n")
    with pytest.raises(DataError, match="neither 'id' nor 'question'"):
        read_stored_solutions(path)
    with pytest.raises(DataError, match="does not exist"):
        read_stored_solutions(tmp_path / "missing.jsonl")


def _problems(compose_cfg, *overrides):
    from runner.config import validate

    with pytest.raises(ConfigError) as info:
        validate(compose_cfg("method=grpo", *overrides))
    return " ".join(info.value.problems)


def test_grpo_config_checks(compose_cfg):
    from runner.config import validate

    validate(compose_cfg("method=grpo"))  # 4 completions per step: one group of 4
    validate(compose_cfg("method=grpo", "method.num_generations=8", "train.micro_batch_size=4",
                         "train.grad_accum_steps=2"))
    text = _problems(compose_cfg, "method.num_generations=8")  # micro_batch_size 4 with 8 generations
    assert "not a multiple of method.num_generations=8" in text and "train.micro_batch_size=8" in text
    text = _problems(compose_cfg, "method.samples=neg", "method.rewards=[math_correct,x]",
                     "method.offline_injection.enabled=true", "method.length_reward.enabled=true",
                     "method.length_reward.lower=2")
    assert "'method.samples' is 'neg'; valid values: all, positive, negative" in text
    assert "has ['x'], which the reward registry does not know" in text
    assert "'method.offline_injection.path' is not set" in text
    assert "'method.length_reward.lower'=2.0 is above" in text
    assert "eval.repeats" in _problems(compose_cfg, "eval.repeats=4")


def test_repeated_evaluation_reports_mean_and_std(monkeypatch, tmp_path):
    from runner import evaluate
    from runner.outputs import RunDir

    # repeat r (seed 10 + r) answers problem i correctly iff i < r + 1: accuracies 1/4, 2/4, 3/4
    def fake_generate(model, tokenizer, prompt_ids, *, seed, num_samples, **kwargs):
        return [[f"The answer is {i if i < seed - 9 else -1}."] * num_samples for i in range(len(prompt_ids))]

    monkeypatch.setattr(evaluate, "generate", fake_generate)
    examples = [Example(f"e{i}", "q", "", str(i)) for i in range(4)]
    cfg = SimpleNamespace(max_new_tokens=8, batch_size=4, temperature=0.6, top_p=1.0, num_samples=1, repeats=3)
    run_dir = RunDir(tmp_path)
    m = evaluate.evaluate_math(None, None, examples, ["p"] * 4, [[1]] * 4, cfg, run_dir, seed=10)
    assert m["eval/accuracy_mean"] == pytest.approx(0.5) and m["eval/accuracy"] == pytest.approx(0.5)
    assert m["eval/accuracy_std"] == pytest.approx(0.25)  # sample std of (0.25, 0.5, 0.75)
    assert m["eval/repeats"] == 3 and m["eval/rows"] == 4
    rows = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and [r["repeat"] for r in rows] == [0] * 4 + [1] * 4 + [2] * 4
    cfg.repeats = 1
    single = evaluate.evaluate_math(None, None, examples, ["p"] * 4, [[1]] * 4, cfg, None, seed=10)
    assert single["eval/accuracy"] == pytest.approx(0.25) and "eval/accuracy_std" not in single
