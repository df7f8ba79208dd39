"""Benchmark 5 (second half): SLAM against full SFT: trainable parameters and optimizer-state bytes.

* ``tiny-llama``, measured: for ``method=sft`` and ``method=slam``, the runner's own pieces (the recipe's parameter
  selection, ``runner.trainer.training_arguments`` and ``RunnerTrainer``, the Trainer's default AdamW) take one
  optimizer step on 8 built-in rows; then the bytes of every tensor in the optimizer's state are summed
  (``exp_avg`` and ``exp_avg_sq``: the moments; ``step``: one scalar per parameter tensor, counted apart).
  The same config's ``plan()`` estimate (8 bytes per trainable parameter in fp32) is recorded next to it.
* ``llama2-7b``, planned: ``dry_run=true`` for both methods (through ``runner.cli.execute``, the path ``run`` takes
  after Hydra); trainable parameters and the optimizer estimate are read from the ``plan.json`` it writes.

Peak RSS of benchmark 1 (the other half of benchmark 5) is measured in :mod:`bench.overhead`.
"""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

from bench.common import say, workdir

GiB = 1024**3


def measure_tiny(method: str, work: Any) -> dict[str, Any]:
    """Trainable parameters and optimizer-state bytes of tiny-llama under ``method`` after one AdamW step."""
    import torch

    from recipes.sft.data import CompletionCollator, encode_examples
    from runner import registry
    from runner.config import compose
    from runner.models import load_model
    from runner.trainer import RunnerTrainer, training_arguments

    cfg = compose(["model=tiny-llama", f"method={method}", "train.max_steps=1", "train.micro_batch_size=8",
                   "eval.enabled=false", "train.save_final=false", f"run_dir={work / method}"])
    recipe = registry.get_recipe(cfg.method.recipe)(cfg)
    plan = recipe.plan()
    model, tokenizer = load_model(cfg.model, cfg.hardware, cfg.cache_dir, precision="fp32")
    model = recipe.select_parameters(model)
    rows = encode_examples(recipe.train_examples()[:8], tokenizer, cfg.data, False, cfg.train.max_seq_len).rows
    args = training_arguments(cfg, "fp32", work / method / "checkpoints", save_strategy="no")
    trainer = RunnerTrainer(model=model, args=args, train_dataset=rows,
                            data_collator=CompletionCollator(tokenizer.pad_token_id))
    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    moments = steps = 0
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                n = value.numel() * value.element_size()
                if key == "step":
                    steps += n
                else:
                    moments += n
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": sum(p.numel() for p in model.parameters()),
            "optimizer": type(optimizer).__name__, "params_with_state": len(optimizer.state),
            "optimizer_state_bytes": moments + steps, "moment_bytes": moments, "step_counter_bytes": steps,
            "plan_trainable_params": plan.trainable_params, "plan_optimizer_bytes": plan.trainable_params * 8,
            "plan_optimizer_gb": plan.memory["optimizer_gb"]}


def plan_7b(method: str, work: Any) -> dict[str, Any]:
    from runner.cli import execute
    from runner.config import compose

    run_dir = work / f"llama2-7b-{method}"
    cfg = compose(["model=llama2-7b", f"method={method}", "dry_run=true", f"run_dir={run_dir}"])
    with contextlib.redirect_stdout(io.StringIO()):
        execute(cfg)
    plan = json.loads((run_dir / "plan.json").read_text())
    return {"trainable_params": plan["trainable_params"], "total_params": plan["total_params"],
            "optimizer_gb": plan["memory"]["optimizer_gb"], "total_gb": plan["memory"]["total_gb"],
            "precision": plan["extra"].get("precision")}


def run(quick: bool) -> dict[str, Any]:
    import os

    os.environ.setdefault("RUNNER_PROGRESS", "0")
    from runner.logging import quiet_libraries

    quiet_libraries()
    work = workdir("memory")
    say("memory: tiny-llama sft and slam, one optimizer step each")
    tiny = {m: measure_tiny(m, work) for m in ("sft", "slam")}
    say("memory: llama2-7b sft and slam dry-run plans")
    big = {m: plan_7b(m, work) for m in ("sft", "slam")}
    return {
        "tiny_llama_measured": {**tiny, "slam_over_sft": {
            "trainable_params": tiny["slam"]["trainable_params"] / tiny["sft"]["trainable_params"],
            "optimizer_state_bytes": tiny["slam"]["optimizer_state_bytes"] / tiny["sft"]["optimizer_state_bytes"]}},
        "llama2_7b_planned": {**big, "slam_over_sft": {
            "trainable_params": big["slam"]["trainable_params"] / big["sft"]["trainable_params"],
            "optimizer_gb": big["slam"]["optimizer_gb"] / big["sft"]["optimizer_gb"]}},
    }
