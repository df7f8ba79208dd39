"""Math evaluation: generate, extract the final answer, match it against the gold one, report per language.

Writes one ``predictions.jsonl`` row per (problem, sample): ``id``, ``lang``, ``sample``, ``prompt``, ``output``,
``extracted``, ``gold``, ``correct``. Returns ``{prefix}/accuracy/<lang>`` and ``{prefix}/accuracy`` (the mean over
languages), accuracy being the mean over samples (Pass@1 when ``eval.num_samples`` > 1).
"""

from __future__ import annotations

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
    outputs = generate(model, tokenizer, prompt_ids, max_new_tokens=eval_cfg.max_new_tokens,
                       batch_size=eval_cfg.batch_size, temperature=eval_cfg.temperature, top_p=eval_cfg.top_p,
                       num_samples=eval_cfg.num_samples, seed=seed, stop_strings=stop_strings,
                       description=prefix)
    records = []
    for ex, prompt, samples in zip(examples, prompts, outputs):
        for k, text in enumerate(samples):
            pred, ok = score_math(text, ex.answer)
            records.append({"id": ex.id, "lang": ex.lang, "sample": k, "prompt": prompt, "output": text,
                            "extracted": pred, "gold": ex.answer, "correct": ok})
    if run_dir is not None and predictions_file:
        run_dir.write_jsonl(predictions_file, records)
    metrics = accuracy_by_language(records, prefix)
    metrics[f"{prefix}/rows"] = len(examples)
    return metrics
