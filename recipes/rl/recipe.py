"""The RL recipe: GRPO with the long-CoT study's variants, then (repeated) math evaluation.

Reads top to bottom: setup (model, prompt rows from the data's questions and gold answers, stored solutions for
offline injection, reward functions by name), train (:class:`recipes.rl.grpo.StudyGRPOTrainer`, TRL's
``GRPOTrainer`` with the study's advantages and variants), evaluate (the SFT recipe's math evaluation;
``eval.repeats`` > 1 reports the mean and standard deviation over repeats), save (``checkpoints/step-N``).
``plan()`` counts parameters, prompts, steps and memory on the meta device, and reads the stored-solutions file, so
a dry-run catches a bad file before any model is loaded.
"""

from __future__ import annotations

import logging
from typing import Any

from recipes.base import Plan
from recipes.sft.recipe import SFTRecipe
from runner.config import global_batch_size, steps_for
from runner.errors import ConfigError, DataError, RunnerError
from runner.hardware import estimate_memory_per_gpu, weights_precision

log = logging.getLogger("runner.rl")


class GRPORecipe(SFTRecipe):
    """GRPO (method ``grpo``) on math prompts; reuses the SFT recipe's data loading and evaluation."""

    # ---- setup ---------------------------------------------------------------------------------------------------
    @property
    def max_prompt_tokens(self) -> int:
        """Prompt budget: ``train.max_seq_len`` minus the response budget ``method.max_completion_length``."""
        return int(self.cfg.train.max_seq_len) - int(self.cfg.method.max_completion_length)

    def stored_solutions(self) -> dict[str, list[str]]:
        """``{Example.id: [solution, ...]}`` of the training prompts, for offline injection ({} when it is off).

        Raises:
            DataError: the file is missing or malformed, or none of its rows matches a training prompt.
        """
        inj = self.cfg.method.offline_injection
        if not inj.enabled or not self.trains:
            return {}
        from recipes.rl.data import read_stored_solutions, solutions_by_id

        table = read_stored_solutions(inj.path)
        found = solutions_by_id(self.train_examples(), table)
        if not found:
            raise DataError(f"none of the {len(table)} prompts in 'method.offline_injection.path'='{inj.path}' "
                            f"matches a training prompt of data={self.cfg.data.name} (matched by 'id', e.g. "
                            f"'{self.train_examples()[0].id}', or by exact 'question' text).")
        return found

    # ---- plan ----------------------------------------------------------------------------------------------------
    def plan(self) -> Plan:
        from runner.models import build_on_meta, count_params

        cfg, m = self.cfg, self.cfg.method
        plan = Plan(recipe=m.recipe, method=m.name, model=cfg.model.name, global_batch_size=global_batch_size(cfg))
        plan.extra["prompts_per_step"] = plan.global_batch_size // max(m.num_generations, 1)
        plan.extra["num_generations"] = m.num_generations
        try:
            plan.total_params, plan.trainable_params = count_params(self.select_parameters(build_on_meta(cfg.model)))
        except RunnerError as ex:
            plan.problems.append(ex.paragraph())
        if self.trains and self.max_prompt_tokens < 1:
            plan.problems.append(f"'train.max_seq_len'={cfg.train.max_seq_len} leaves no room for a prompt after "
                                 f"'method.max_completion_length'={m.max_completion_length} response tokens; raise "
                                 "train.max_seq_len.")
        try:
            train, evals = self.train_examples(), self.eval_examples()
            plan.train_rows, plan.eval_rows = len(train), len(evals)
            tokenizer = self._tokenizer_for_plan()
            if tokenizer is not None and train and self.max_prompt_tokens >= 1:
                from recipes.rl.data import prompt_rows

                rows = prompt_rows(train, tokenizer, cfg.data, m.use_chat_template, self.max_prompt_tokens)
                plan.train_rows = len(rows.rows)
                plan.extra["longest_prompt_tokens"] = rows.max_len
                if rows.dropped:
                    plan.notes.append(f"{rows.dropped} prompts longer than train.max_seq_len - "
                                      f"method.max_completion_length = {self.max_prompt_tokens} tokens are dropped")
                if not rows.rows:
                    plan.problems.append(f"every prompt is longer than {self.max_prompt_tokens} tokens (longest "
                                         f"{rows.max_len}); raise train.max_seq_len.")
            elif train:
                plan.notes.append("prompt lengths not checked: the tokenizer is not available offline")
            if self.trains and not train:
                plan.problems.append(f"data={cfg.data.name} gave no training prompts.")
            plan.extra["injection_prompts"] = len(self.stored_solutions())
        except RunnerError as ex:
            plan.problems.append(ex.paragraph())
        plan.steps = steps_for(plan.train_rows * m.num_generations, cfg) if self.trains else 0
        plan.memory = estimate_memory_per_gpu(cfg, plan.total_params, plan.trainable_params, training=self.trains)
        if self.trains and m.beta > 0:  # the frozen reference model of the KL term
            ref = estimate_memory_per_gpu(cfg, plan.total_params, 0, training=False)["weights_gb"]
            plan.memory["reference_gb"] = ref
            plan.memory["total_gb"] = round(plan.memory["total_gb"] + ref, 3)
        plan.memory_gb = plan.memory["total_gb"]
        return plan

    # ---- run -----------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        from runner import hardware
        from runner.models import count_params, load_model

        cfg = self.cfg
        precision = hardware.resolve_precision(cfg.hardware)
        stored = self.stored_solutions()  # a bad file fails before the model loads
        model, tokenizer = load_model(cfg.model, cfg.hardware, cfg.cache_dir,
                                      precision=weights_precision(cfg, precision))
        model = self.select_parameters(model)
        total, trainable = count_params(model)
        metrics: dict[str, Any] = {"train/total_params": total, "train/trainable_params": trainable,
                                   "train/trainable_fraction": trainable / total if total else 0.0}
        if self.trains:
            metrics.update(self.train(model, tokenizer, precision, stored))
            model = self._trained_model
        metrics.update(self.evaluate(model, tokenizer))
        return metrics

    def train(self, model: Any, tokenizer: Any, precision: str, stored: dict[str, list[str]]) -> dict[str, Any]:
        """GRPO training; returns ``train/*`` metrics (per-step figures go to ``metrics.jsonl``)."""
        import datasets
        from trl import GRPOConfig

        from recipes.rl.data import prompt_rows
        from recipes.rl.grpo import StudyGRPOTrainer, StudySettings
        from recipes.rl.rewards import get_reward
        from runner.trainer import MetricsCallback, RichProgressCallback, training_arguments

        cfg, m = self.cfg, self.cfg.method
        if self.max_prompt_tokens < 1:
            raise ConfigError(f"'train.max_seq_len'={cfg.train.max_seq_len} leaves no room for a prompt after "
                              f"'method.max_completion_length'={m.max_completion_length}; raise train.max_seq_len.")
        rows = prompt_rows(self.train_examples(), tokenizer, cfg.data, m.use_chat_template, self.max_prompt_tokens)
        if not rows.rows:
            raise ConfigError(f"no prompt fits train.max_seq_len - method.max_completion_length = "
                              f"{self.max_prompt_tokens} tokens (longest {rows.max_len}); raise train.max_seq_len.")
        rewards = [get_reward(name, dict(m.reward_options.get(name) or {})) for name in m.rewards]
        args = training_arguments(
            cfg, precision, self.run_dir / "checkpoints", args_class=GRPOConfig,
            num_generations=m.num_generations, max_completion_length=m.max_completion_length,
            temperature=m.temperature, top_p=m.top_p, top_k=0, beta=m.beta, epsilon=m.epsilon,
            epsilon_high=m.epsilon_high, num_iterations=m.num_iterations, loss_type="bnpo", scale_rewards="group",
            reward_weights=list(m.reward_weights) if m.reward_weights is not None else None,
            mask_truncated_completions=False, log_completions=False, shuffle_dataset=True,
            # TRL builds the KL reference from the policy's name_or_path with these (the policy is already loaded)
            trust_remote_code=cfg.model.trust_remote_code,
            model_init_kwargs={"revision": cfg.model.revision} if cfg.model.revision else None)
        metrics_cb, progress_cb = MetricsCallback(self.metrics), RichProgressCallback()
        trainer = StudyGRPOTrainer(model=model, reward_funcs=rewards, args=args,
                                   train_dataset=datasets.Dataset.from_list(rows.rows), processing_class=tokenizer,
                                   callbacks=[metrics_cb, progress_cb], study=StudySettings.from_method(m),
                                   stored_solutions=stored)
        trainer.keep_last_n = cfg.train.keep_last_n
        eval_cb = self._periodic_eval_callback(tokenizer)
        if eval_cb is not None:
            trainer.add_callback(eval_cb)
        resume_from = str(self.resume_from.path) if self.resume_from is not None else None
        try:
            result = trainer.train(resume_from_checkpoint=resume_from)
        finally:
            progress_cb.on_train_end(None, None, None)
        out: dict[str, Any] = {"train/loss": float(result.training_loss), "train/steps": int(trainer.state.global_step),
                               "train/prompts": len(rows.rows), "train/dropped_prompts": rows.dropped}
        if metrics_cb.losses:
            out["train/loss_first"] = metrics_cb.losses[0][1]
            out["train/loss_last"] = metrics_cb.losses[-1][1]
        if m.offline_injection.enabled:
            out["train/injection_prompts"] = len(trainer.stored)
            out["train/injection_solutions_too_long"] = trainer.stored_too_long
        if cfg.train.save_final:
            out["train/final_checkpoint"] = str(trainer.save_final())
        self._trained_model = trainer.model
        return out
