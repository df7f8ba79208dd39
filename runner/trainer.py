"""The HF ``Trainer`` as the runner uses it: arguments from ``train.*`` and ``hardware.*``, atomic checkpoints in
``checkpoints/step-N``, a NaN guard, and callbacks that write ``metrics.jsonl`` and draw a ``rich`` progress bar.

Recipes whose method is a loss or a parameter selection subclass :class:`RunnerTrainer` (overriding ``compute_loss``
where needed) rather than writing their own loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from runner import checkpoint
from runner.errors import TrainingError
from runner.logging import MetricsLogger, progress

_SAMPLING = {"random": "random", "length_grouped": "group_by_length", "sequential": "sequential"}


def training_arguments(cfg: Any, precision: str, output_dir: str | Path, args_class: type = TrainingArguments,
                       **overrides: Any) -> TrainingArguments:
    """``TrainingArguments`` derived from the runner config (one home per knob: ``train.*`` and ``hardware.*``).

    ``args_class`` builds a subclass instead (e.g. TRL's ``GRPOConfig``), ``overrides`` adding its own fields."""
    t, hw = cfg.train, cfg.hardware
    total = t.max_steps if t.max_steps > 0 else None
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.grad_accum_steps,
        learning_rate=t.lr,
        num_train_epochs=float(t.epochs),
        max_steps=total if total else -1,
        lr_scheduler_type={"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[
            t.lr_scheduler],
        warmup_steps=float(t.warmup_ratio),
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        max_grad_norm=t.max_grad_norm if t.max_grad_norm > 0 else 0.0,
        logging_steps=max(t.logging_steps, 1),
        logging_first_step=True,
        logging_nan_inf_filter=False,
        save_strategy="steps" if t.save_steps > 0 else "no",
        save_steps=t.save_steps if t.save_steps > 0 else 500,
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=int(cfg.seed),
        data_seed=int(cfg.seed),
        use_cpu=hw.device == "cpu",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        train_sampling_strategy=_SAMPLING[t.batching],
        gradient_checkpointing=t.gradient_checkpointing,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        save_only_model=False,
        skip_memory_metrics=True,
    )
    if hw.distributed != "none":
        kwargs["ddp_backend"] = hw.backend if hw.backend != "auto" else ("nccl" if hw.device == "cuda" else "gloo")
    kwargs.update(overrides)
    return args_class(**kwargs)


class RunnerTrainer(Trainer):
    """``Trainer`` with the runner's checkpoint layout and a NaN guard.

    * Checkpoints go to ``<run dir>/checkpoints/step-N`` through :func:`runner.checkpoint.atomic_dir`; older ones are
      pruned to ``train.keep_last_n``.
    * A NaN or infinite loss stops the run with :class:`TrainingError` naming the step; the last good checkpoint
      stays.
    """

    keep_last_n: int | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.remove_callback(PrinterCallback)  # metrics go to metrics.jsonl and the rich bar, not raw dicts on stdout

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            last = checkpoint.latest(self.args.output_dir)
            kept = f"the last good checkpoint is '{last}'" if last else "no checkpoint had been saved yet"
            raise TrainingError(f"the training loss became {loss.item()} at step {self.state.global_step + 1}; "
                                f"training stopped ({kept}). Lower train.lr, enable train.max_grad_norm, or check "
                                "the data for broken rows.")
        return loss

    def _save_checkpoint(self, model, trial):
        final = checkpoint.step_dir(self.args.output_dir, self.state.global_step)
        if self.args.should_save:
            with checkpoint.atomic_dir(final) as tmp:
                self._write_checkpoint(str(tmp))
            checkpoint.prune(self.args.output_dir, self.keep_last_n)
        else:  # other ranks take part in collective saves (ZeRO-3 gathers, optimizer shards)
            self._write_checkpoint(str(final))

    def _write_checkpoint(self, output_dir: str) -> None:
        self.save_model(output_dir, _internal_call=True)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(output_dir)
            self._save_scaler(output_dir)
            self._save_rng_state(output_dir)
        if self.args.should_save:
            self.state.save_to_json(str(Path(output_dir) / "trainer_state.json"))

    def save_final(self) -> Path:
        """Save the current step as a checkpoint unless it was just saved; returns its dir."""
        final = checkpoint.step_dir(self.args.output_dir, self.state.global_step)
        if not final.exists():
            self._save_checkpoint(self.model, trial=None)
        return final


class MetricsCallback(TrainerCallback):
    """Writes every Trainer log as ``<prefix>/<key>`` (``train/loss``, ``train/lr``...) to ``metrics.jsonl`` (and the
    tracker); keeps the loss curve. A recipe that trains several times in one run (stages) gives each a prefix."""

    def __init__(self, metrics: MetricsLogger, extra: Any = None, prefix: str = "train"):
        self.metrics = metrics
        self.losses: list[tuple[int, float]] = []
        self.extra = extra
        self.prefix = prefix

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        row = {}
        for key, value in logs.items():
            if key in ("epoch",):
                row[f"{self.prefix}/epoch"] = value
            elif key == "learning_rate":
                row[f"{self.prefix}/lr"] = value
            elif key.startswith(("train_", "total_flos")):
                continue
            elif isinstance(value, (int, float)):
                row[f"{self.prefix}/{key}"] = value
        if f"{self.prefix}/loss" in row:
            self.losses.append((state.global_step, float(row[f"{self.prefix}/loss"])))
        if row:
            self.metrics.log(row, step=state.global_step)


class RichProgressCallback(TrainerCallback):
    """A ``rich`` progress bar over optimizer steps, showing the latest loss."""

    def __init__(self):
        self._ctx = None
        self._bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._ctx = progress("train", state.max_steps)
        self._bar = self._ctx.__enter__()
        if state.global_step:
            self._bar.advance(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self._bar is not None:
            self._bar.advance(1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._bar is not None and logs and "loss" in logs:
            self._bar.update(info=f"loss {logs['loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = self._bar = None
