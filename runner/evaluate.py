"""Math evaluation: generate, extract the final answer, match it against the gold one, report per language.

Writes one ``predictions.jsonl`` row per (problem, sample, repeat): ``id``, ``lang``, ``sample``, ``repeat``,
``prompt``, ``output``, ``extracted``, ``gold``, ``correct``. Returns ``{prefix}/accuracy/<lang>`` and
``{prefix}/accuracy`` (the mean over languages), accuracy being the mean over samples (Pass@1 when
``eval.num_samples`` > 1) and over repeats.

``eval.repeats`` = N > 1 runs the whole evaluation N times with seeds ``seed, seed + 1, ...`` and also reports
``{prefix}/accuracy_mean`` and ``{prefix}/accuracy_std``: the mean and the sample standard deviation (divisor N - 1)
of the N accuracies, the long-CoT study's remedy for scores that flip between runs (Mu et al. 2025, evaluation
scripts: mean over 4-64 sampled runs at T=0.6, top-p 0.95).

With ``eval.num_samples`` > 1 it also returns, for each k of ``eval.pass_at_k``, ``{prefix}/pass@{k}`` (the unbiased
estimator of Chen et al. 2021) and ``{prefix}/pass@{k}_any`` (the any-correct count OXA reports), each per language
too (see :func:`runner.metrics.pass_at_k_by_language`; the samples of all repeats are pooled).

Answers are matched by ``answer_match`` (``data.answer_match``): ``numeric`` for GSM8K/MGSM-style numbers, or
``math_verify`` for competition math (``\\boxed{}`` answers compared with the ``math-verify`` library).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from runner.data import Example
from runner.generate import generate
from runner.metrics import accuracy_by_language, parse_gold, pass_at_k_by_language, score_answer
from runner.outputs import RunDir


def score_math(output: str, gold: str, answer_match: str = "numeric") -> tuple[str | None, bool]:
    """(extracted answer, correct) for one output, with the matcher ``answer_match`` (``numeric`` or
    ``math_verify``)."""
    return score_answer(output, gold, answer_match)


def evaluate_math(model: Any, tokenizer: Any, examples: Sequence[Example], prompts: Sequence[str],
                  prompt_ids: Sequence[Sequence[int]], eval_cfg: Any, run_dir: RunDir | None, *, seed: int = 0,
                  prefix: str = "eval", predictions_file: str | None = "predictions.jsonl",
                  stop_strings: Sequence[str] = (), answer_match: str = "numeric") -> dict[str, float]:
    """Generate answers for ``examples`` and score them.

    Args:
        model, tokenizer: the model under evaluation.
        examples: rows with gold ``answer`` and ``lang``.
        prompts: the prompt text of each row (as written to predictions).
        prompt_ids: the token ids of each prompt.
        eval_cfg: the ``eval`` config node (batch size, budget, sampling, ``num_samples``, ``pass_at_k``,
            ``repeats``).
        run_dir: where predictions are written (None: not written).
        seed: sampling seed.
        prefix: metric key prefix.
        predictions_file: file name in the run dir.
        stop_strings: outputs are cut at the first of these.
        answer_match: ``numeric`` or ``math_verify`` (see :func:`runner.metrics.score_answer`).
    """
    repeats = max(int(getattr(eval_cfg, "repeats", 1) or 1), 1)
    golds: list[Any] = [parse_gold(ex.answer) if answer_match == "math_verify" else ex.answer for ex in examples]
    records: list[dict[str, Any]] = []
    accuracies = []
    for repeat in range(repeats):
        outputs = generate(model, tokenizer, prompt_ids, max_new_tokens=eval_cfg.max_new_tokens,
                           batch_size=eval_cfg.batch_size, temperature=eval_cfg.temperature, top_p=eval_cfg.top_p,
                           num_samples=eval_cfg.num_samples, seed=seed + repeat, stop_strings=stop_strings,
                           description=prefix if repeats == 1 else f"{prefix} {repeat + 1}/{repeats}")
        run = []
        for ex, gold, prompt, samples in zip(examples, golds, prompts, outputs):
            for k, text in enumerate(samples):
                pred, ok = score_answer(text, gold, answer_match)
                run.append({"id": ex.id, "lang": ex.lang, "sample": k, "repeat": repeat, "prompt": prompt,
                            "output": text, "extracted": pred, "gold": ex.answer, "correct": ok})
        accuracies.append(accuracy_by_language(run, prefix).get(f"{prefix}/accuracy", 0.0))
        records.extend(run)
    if run_dir is not None and predictions_file:
        run_dir.write_jsonl(predictions_file, records)
    metrics = accuracy_by_language(records, prefix)  # equal rows per repeat: the mean over repeats
    if eval_cfg.num_samples > 1:
        metrics.update(pass_at_k_by_language(records, list(eval_cfg.pass_at_k), prefix))
    metrics[f"{prefix}/rows"] = len(examples)
    if repeats > 1:
        metrics[f"{prefix}/accuracy_mean"] = statistics.fmean(accuracies)
        metrics[f"{prefix}/accuracy_std"] = statistics.stdev(accuracies)
        metrics[f"{prefix}/repeats"] = repeats
    return metrics
