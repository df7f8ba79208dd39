"""Math evaluation: generate, extract the final answer, match it against the gold one, report per language.

Writes one ``predictions.jsonl`` row per (problem, sample, repeat): ``id``, ``lang``, ``sample``, ``repeat``,
``prompt``, ``output``, ``extracted``, ``gold``, ``correct``. Returns ``{prefix}/accuracy/<lang>`` and
``{prefix}/accuracy`` (the mean over languages), accuracy being the mean over samples (Pass@1 when
``eval.num_samples`` > 1) and over repeats.

``eval.repeats`` = N > 1 runs the whole evaluation N times with seeds ``seed, seed + 1, ...`` and also reports
``{prefix}/accuracy_mean`` and ``{prefix}/accuracy_std``: the mean and the sample standard deviation (divisor N - 1)
of the N accuracies, the long-CoT study's remedy for scores that flip between runs (Mu et al. 2025, evaluation
scripts: mean over 4-64 sampled runs at T=0.6, top-p 0.95).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from runner.data import Example
from runner.generate import generate
from runner.metrics import accuracy_by_language, extract_answer, numeric_match
from runner.outputs import RunDir


def score_math(output: str, gold: str) -> tuple[str | None, bool]:
    """(extracted answer, correct) for one output."""
    pred = extract_answer(output)
    return pred, numeric_match(pred, gold)


def evaluate_math(model: Any, tokenizer: Any, examples: Sequence[Example], prompts: Sequence[str],
                  prompt_ids: Sequence[Sequence[int]], eval_cfg: Any, run_dir: RunDir | None, *, seed: int = 0,
                  prefix: str = "eval", predictions_file: str | None = "predictions.jsonl",
                  stop_strings: Sequence[str] = ()) -> dict[str, float]:
    """Generate answers for ``examples`` and score them.

    Args:
        model, tokenizer: the model under evaluation.
        examples: rows with gold ``answer`` and ``lang``.
        prompts: the prompt text of each row (as written to predictions).
        prompt_ids: the token ids of each prompt.
        eval_cfg: the ``eval`` config node (batch size, budget, sampling).
        run_dir: where predictions are written (None: not written).
        seed: sampling seed.
        prefix: metric key prefix.
        predictions_file: file name in the run dir.
        stop_strings: outputs are cut at the first of these.
    """
    repeats = max(int(getattr(eval_cfg, "repeats", 1) or 1), 1)
    records: list[dict[str, Any]] = []
    accuracies = []
    for repeat in range(repeats):
        outputs = generate(model, tokenizer, prompt_ids, max_new_tokens=eval_cfg.max_new_tokens,
                           batch_size=eval_cfg.batch_size, temperature=eval_cfg.temperature, top_p=eval_cfg.top_p,
                           num_samples=eval_cfg.num_samples, seed=seed + repeat, stop_strings=stop_strings,
                           description=prefix if repeats == 1 else f"{prefix} {repeat + 1}/{repeats}")
        run = []
        for ex, prompt, samples in zip(examples, prompts, outputs):
            for k, text in enumerate(samples):
                pred, ok = score_math(text, ex.answer)
                run.append({"id": ex.id, "lang": ex.lang, "sample": k, "repeat": repeat, "prompt": prompt,
                            "output": text, "extracted": pred, "gold": ex.answer, "correct": ok})
        accuracies.append(accuracy_by_language(run, prefix).get(f"{prefix}/accuracy", 0.0))
        records.extend(run)
    if run_dir is not None and predictions_file:
        run_dir.write_jsonl(predictions_file, records)
    metrics = accuracy_by_language(records, prefix)  # equal rows per repeat: the mean over repeats
    metrics[f"{prefix}/rows"] = len(examples)
    if repeats > 1:
        metrics[f"{prefix}/accuracy_mean"] = statistics.fmean(accuracies)
        metrics[f"{prefix}/accuracy_std"] = statistics.stdev(accuracies)
        metrics[f"{prefix}/repeats"] = repeats
    return metrics
