"""Benchmark 2: training tokens per second on GSM8K against TRL's ``SFTTrainer`` with its defaults.

Both sides train the 20M-parameter benchmark model for one epoch over the same first N rows of GSM8K train
(``../shared/data/gsm8k``), rendered with ``data=gsm8k``'s templates, with completion-only loss, batch 8, in this
one Python process (imports paid once; sides alternate A B A B on a fresh copy of the model each time).

A, the runner: ``runner.cli.execute`` on the composed config (the path ``run`` takes after Hydra), with its defaults:
``train.padding_free=true`` (each micro-batch of 8 rows flattened into one row, no padding, attention per sequence:
``runner/padding_free.py``) and ``train.batching=length_grouped`` (the Trainer's length-grouped sampler; it sorts
rows inside random megabatches of :func:`megabatch_rows` rows, which no longer changes the work once there is no
padding, only the order).
B, TRL 1.16 ``SFTTrainer`` on a ``{"prompt", "completion"}`` dataset with its defaults (no packing, no padding-free,
random order, completion-only loss, ``max_length=1024``), except what must match for the comparison to be about
batching: fp32 (TRL's default is bf16 autocast) and no gradient checkpointing (TRL's default is on), the runner's
own settings.
C (full mode only), TRL exactly as shipped: its defaults including bf16 autocast and gradient checkpointing.

Tokens per second = completion tokens seen / ``Trainer.train()`` runtime. Both sides see the same rows once, so the
same completion tokens: the result records both counts (they must be equal) and the total (non-padding) tokens.
Each side's collator is wrapped to count the padded tokens it hands the model (rows x width of every batch): the
padding each batching leaves is what the speed difference comes from.
That the two build the same labels, and so the same loss on the same batch, is a test:
``tests/unit/test_trl_parity.py``.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

from bench import stats
from bench.common import MODEL_20M, SHARED_DATA, say, workdir


class PaddingCounter:
    """Wraps a collator; counts the tokens of every batch it builds, padding included (``rows x width``)."""

    def __init__(self, collate: Any):
        self.collate = collate
        self.padded = 0

    def __call__(self, features: Any) -> Any:
        batch = self.collate(features)
        self.padded += int(batch["input_ids"].numel())
        return batch


QUICK = {"rows": 16, "batch_size": 8, "repeats": 2, "warmup_rows": 8, "trl_as_shipped": False}
FULL = {"rows": 128, "batch_size": 8, "repeats": 3, "warmup_rows": 8, "trl_as_shipped": True}


def megabatch_rows(rows: int, batch_size: int) -> int:
    """Rows the Trainer's length-grouped sampler sorts together: ``min(rows // (4 x batch), 50) x batch`` (at least one
    batch), as ``transformers.trainer_pt_utils.get_length_grouped_indices`` chooses them. Below ``8 x batch`` rows
    every megabatch is one batch, so nothing is grouped; from ``200 x batch`` rows on, megabatches hold 50 batches."""
    return max(min(rows // (batch_size * 4), 50), 1) * batch_size


def _overrides(gsm8k: Any, rows: int, batch_size: int) -> list[str]:
    return [*MODEL_20M, "method=sft", "data=gsm8k", f"data.path={gsm8k}", f"data.max_samples={rows}",
            "train.epochs=1", "train.max_steps=-1", f"train.micro_batch_size={batch_size}", "train.max_seq_len=1024",
            "eval.enabled=false", "train.save_final=false"]


def run(quick: bool) -> dict[str, Any]:
    p = QUICK if quick else FULL
    gsm8k = SHARED_DATA / "gsm8k"
    if not (gsm8k / "train.jsonl").exists():
        return {"skipped": f"GSM8K train not found at {gsm8k} (the benchmark reads ../shared/data/gsm8k)"}
    import os

    os.environ.setdefault("RUNNER_PROGRESS", "0")
    from runner.logging import quiet_libraries

    quiet_libraries()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from recipes.sft import data as sft_data
    from recipes.sft.data import IGNORE_INDEX, encode_examples
    from runner import data as data_lib
    from runner import padding_free
    from runner.cli import execute
    from runner.config import compose
    from runner.models import load_tokenizer, model_source

    work = workdir("throughput")
    base = compose([*_overrides(gsm8k, p["rows"], p["batch_size"]), f"run_dir={work / 'probe'}"])
    model_dir = model_source(base.model, base.cache_dir)
    examples = data_lib.load_split(base.data, base.data.train_split, max_total=p["rows"])
    pairs = [data_lib.render(ex, base.data) for ex in examples]
    enc = encode_examples(examples, load_tokenizer(base.model, model_dir), base.data, False, base.train.max_seq_len)
    runner_completion = sum(sum(1 for t in r["labels"] if t != IGNORE_INDEX) for r in enc.rows)
    runner_total = sum(len(r["input_ids"]) for r in enc.rows)

    def n_rows(i: int) -> int:
        return p["rows"] if i >= 0 else p["warmup_rows"]

    padded: dict[str, int] = {}

    def runner_side(i: int) -> float:
        cfg = compose([*_overrides(gsm8k, n_rows(i), p["batch_size"]), f"run_dir={work / f'runner-{i + 100}'}"])
        original, original_flat = sft_data.CompletionCollator.__call__, padding_free.collator
        seen = [0]

        def counting(self: Any, features: Any) -> Any:
            batch = original(self, features)
            seen[0] += int(batch["input_ids"].numel())
            return batch

        def counting_flat() -> PaddingCounter:
            counter = PaddingCounter(original_flat())
            counters.append(counter)
            return counter

        counters: list[PaddingCounter] = []
        # count only; the batches are the runner's own (padded or flattened, as train.padding_free says)
        sft_data.CompletionCollator.__call__ = counting
        padding_free.collator = counting_flat
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                metrics = execute(cfg)
        finally:
            sft_data.CompletionCollator.__call__ = original
            padding_free.collator = original_flat
        if i >= 0:
            padded["runner"] = seen[0] + sum(c.padded for c in counters)
        return float(metrics["train/runtime_s"])

    trl_counts: dict[str, int] = {}

    def trl_side(shipped: bool):
        def side(i: int) -> float:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            dataset = Dataset.from_list([{"prompt": a, "completion": b} for a, b in pairs[: n_rows(i)]])
            matched = {} if shipped else {"bf16": False, "gradient_checkpointing": False}
            args = SFTConfig(output_dir=str(work / f"trl-{i + 100}"), per_device_train_batch_size=p["batch_size"],
                             num_train_epochs=1, use_cpu=True, report_to="none", save_strategy="no", seed=0,
                             disable_tqdm=True, **matched)
            trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
            counter = trainer.data_collator = PaddingCounter(trainer.data_collator)
            if i >= 0:
                labels = trainer.train_dataset["labels"]
                trl_counts["rows"] = len(labels)
                trl_counts["completion_tokens"] = sum(sum(1 for t in row if t != -100) for row in labels)
                trl_counts["total_tokens"] = sum(len(row) for row in trainer.train_dataset["input_ids"])
            runtime = float(trainer.train().metrics["train_runtime"])
            if i >= 0:
                padded["trl_as_shipped" if shipped else "trl"] = counter.padded
            return runtime
        return side

    sides = {"runner": runner_side, "trl": trl_side(False)}
    if p["trl_as_shipped"]:
        sides["trl_as_shipped"] = trl_side(True)
    res = stats.alternate(sides, p["repeats"], warmup=1, log=lambda m: say(f"throughput {m}"))

    def tps(times: list[float]) -> list[float]:
        return [runner_completion / t for t in times]

    out: dict[str, Any] = {
        "setup": {**p, "data": f"GSM8K train, first {p['rows']} rows", "epochs": 1,
                  "runner_batching": "padding-free (train.padding_free=true, the default), length-grouped order",
                  "runner_megabatch_rows": megabatch_rows(p["rows"], p["batch_size"]),
                  "trl": "SFTConfig defaults + bf16=False, gradient_checkpointing=False"},
        "tokens": {"runner_rows": len(enc.rows), "trl_rows": trl_counts.get("rows"),
                   "runner_completion_tokens": runner_completion,
                   "trl_completion_tokens": trl_counts.get("completion_tokens"),
                   "runner_total_tokens": runner_total, "trl_total_tokens": trl_counts.get("total_tokens"),
                   "runner_padded_tokens": padded.get("runner"), "trl_padded_tokens": padded.get("trl"),
                   "equal": runner_completion == trl_counts.get("completion_tokens")
                   and len(enc.rows) == trl_counts.get("rows")},
        "train_phase_s": stats.compare(res["runner"], res["trl"]),
        "completion_tokens_per_s": stats.compare(tps(res["runner"]), tps(res["trl"])),
        "target": {"figure": "completion_tokens_per_s", "min_ratio": 1.3},
    }
    if "trl_as_shipped" in res:
        out["vs_trl_as_shipped"] = {
            "train_phase_s": stats.compare(res["runner"], res["trl_as_shipped"]),
            "completion_tokens_per_s": stats.compare(tps(res["runner"]), tps(res["trl_as_shipped"]))}
    return out
