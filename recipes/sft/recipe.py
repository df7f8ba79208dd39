"""The SFT recipe: prompt-completion fine-tuning (full, LoRA or SLAM) and multilingual math evaluation.

Reads top to bottom: setup (model, method's parameter selection, data), train (the HF ``Trainer`` through
:class:`runner.trainer.RunnerTrainer`; completion-only loss), evaluate (batched greedy generation, answer extraction,
per-language accuracy), save (``checkpoints/step-N`` as safetensors). ``plan()`` does the same bookkeeping on the meta
device without loading weights, so ``dry_run=true`` works for a 13B model offline.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from recipes.base import Plan, Recipe
from runner import data as data_lib
from runner.config import global_batch_size, steps_for
from runner.errors import ConfigError, RunDirError, RunnerError
from runner.hardware import estimate_memory_per_gpu

log = logging.getLogger("runner.sft")


METHOD_RECIPES: dict[str, str] = {
    "oxa": "recipes.sft.oxa_recipe:OxaRecipe",
    "gram": "recipes.sft.gram_recipe:GramRecipe",
}
"""SFT-family methods with their own pipeline: method name -> ``module:Class`` (a subclass of :class:`SFTRecipe`)."""


class SFTRecipe(Recipe):
    """Supervised fine-tuning on prompt-completion rows; methods ``sft`` (full), ``lora`` and ``slam``.

    ``SFTRecipe(cfg)`` returns the method's own subclass for the methods of :data:`METHOD_RECIPES` (OXA's staged
    pipeline, GRAM's two stages on preference pairs), so the registry keeps one recipe per family.
    """

    def __new__(cls, cfg: Any, metrics: Any = None):
        path = METHOD_RECIPES.get(str(cfg.method.name)) if cls is SFTRecipe else None
        if path:
            import importlib

            module, _, name = path.partition(":")
            cls = getattr(importlib.import_module(module), name)
        return super().__new__(cls)

    supports_resume = True

    def __init__(self, cfg: Any, metrics: Any = None):
        super().__init__(cfg, metrics)
        self._train_examples: list[data_lib.Example] | None = None
        self._eval_examples: list[data_lib.Example] | None = None
        self._plan_encoding: Any = None
        self.slam_layers: list[int] | None = None

    # ---- data ----------------------------------------------------------------------------------------------------
    @property
    def trains(self) -> bool:
        return self.cfg.train.max_steps != 0

    def train_examples(self) -> list[data_lib.Example]:
        if self._train_examples is None:
            d = self.cfg.data
            if not self.trains:
                self._train_examples = []
            elif d.train_split is None:
                raise ConfigError(f"data={d.name} has no train split (data.train_split is null) but the run trains; "
                                  "set train.max_steps=0 to evaluate only, or use a dataset with a train split "
                                  "(arith, gsm8k, mgsm).")
            else:
                self._train_examples = data_lib.load_split(d, d.train_split, max_total=d.max_samples)
        return self._train_examples

    def eval_examples(self) -> list[data_lib.Example]:
        if self._eval_examples is None:
            split = self.cfg.eval.split or self.cfg.data.eval_split
            if not self.cfg.eval.enabled or split is None:
                self._eval_examples = []
            else:
                self._eval_examples = data_lib.load_split(self.cfg.data, split, max_per_lang=self.cfg.eval.max_samples)
        return self._eval_examples

    # ---- method --------------------------------------------------------------------------------------------------
    def select_parameters(self, model: Any) -> Any:
        """Apply the method's parameter selection; returns the model to train (wrapped for LoRA)."""
        m = self.cfg.method
        if m.name == "lora":
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                              target_modules=list(m.target_modules), task_type="CAUSAL_LM")
            try:
                return get_peft_model(model, lora)
            except ValueError as ex:
                raise ConfigError(f"'method.target_modules' {list(m.target_modules)} do not fit "
                                  f"{type(model).__name__}: {ex}") from None
        if m.name == "slam":
            from recipes.sft.slam import apply_slam

            layers = self.slam_layers if self.slam_layers is not None else m.layers
            if isinstance(layers, str):  # 'auto' on the meta device: count auto_num_layers bottom layers
                layers = list(range(m.auto_num_layers))
            apply_slam(model, [int(x) for x in layers], list(m.modules))
            return model
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    # ---- plan ----------------------------------------------------------------------------------------------------
    def plan_parameters(self) -> Plan:
        """A :class:`Plan` with the parameter counts of the model under the method (built on the meta device)."""
        from runner.models import build_on_meta, count_params, largest_module_params

        cfg = self.cfg
        plan = Plan(recipe=cfg.method.recipe, method=cfg.method.name, model=cfg.model.name,
                    global_batch_size=global_batch_size(cfg))
        try:
            meta = self.select_parameters(build_on_meta(cfg.model))
            plan.total_params, plan.trainable_params = count_params(meta)
            self._largest_module_params = largest_module_params(meta)
            if cfg.method.name == "lora":  # LoRA adds adapter params to the total; report against the base model
                plan.extra["adapter_params"] = plan.trainable_params
                plan.total_params -= plan.trainable_params
        except RunnerError as ex:
            plan.problems.append(ex.paragraph())
        return plan

    def plan_memory(self, plan: Plan) -> Plan:
        """Fill the per-GPU memory estimate of ``plan`` for ``hardware.*`` (ZeRO stage, world size; training or
        inference as ``self.trains`` says): :func:`runner.hardware.estimate_memory_per_gpu`."""
        plan.memory = estimate_memory_per_gpu(self.cfg, plan.total_params + plan.extra.get("adapter_params", 0),
                                              plan.trainable_params,
                                              largest_layer_params=getattr(self, "_largest_module_params", 0),
                                              training=self.trains)
        plan.memory_gb = plan.memory["total_gb"]
        return plan

    def plan(self) -> Plan:
        cfg = self.cfg
        plan = self.plan_parameters()
        if cfg.method.name == "slam":
            if isinstance(cfg.method.layers, str):
                plan.notes.append(f"layers chosen at run time by the layer analysis ({cfg.method.auto_num_layers} "
                                  "layers; the count assumes equal-sized layers)")
            else:
                plan.extra["slam_layers"] = str(list(cfg.method.layers))
        try:
            train, evals = self.train_examples(), self.eval_examples()
            plan.train_rows, plan.eval_rows = len(train), len(evals)
            tokenizer = self._tokenizer_for_plan()
            if tokenizer is not None and train:
                from recipes.sft.data import encode_examples

                enc = encode_examples(train, tokenizer, cfg.data, cfg.method.use_chat_template, cfg.train.max_seq_len)
                if cfg.model.build == "tiny" or cfg.model.path:  # the tokenizer run() loads: reuse the rows there
                    self._plan_encoding = enc
                plan.train_rows = len(enc.rows)
                plan.extra["longest_row_tokens"] = enc.max_len
                if enc.dropped:
                    plan.notes.append(f"{enc.dropped} training rows longer than train.max_seq_len="
                                      f"{cfg.train.max_seq_len} tokens are dropped")
                if not enc.rows:
                    plan.problems.append(f"every training row is longer than train.max_seq_len="
                                         f"{cfg.train.max_seq_len} tokens (longest {enc.max_len}); raise it.")
            elif train:
                plan.notes.append("row lengths not checked: the tokenizer is not available offline")
            if self.trains and cfg.train.max_steps < 0 and not train:
                plan.problems.append(f"data={cfg.data.name} gave no training rows.")
        except RunnerError as ex:
            plan.problems.append(ex.paragraph())
        plan.steps = steps_for(plan.train_rows, cfg) if self.trains else 0
        return self.plan_memory(plan)

    def _tokenizer_for_plan(self) -> Any:
        """The tokenizer when it is at hand without a download (tiny models, local dirs, the local HF cache)."""
        from runner.models import load_tokenizer, model_source

        m = self.cfg.model
        try:
            if m.build == "tiny" or m.path:
                return load_tokenizer(m, model_source(m, self.cfg.cache_dir))
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(m.tokenizer or m.hub_id, local_files_only=True,
                                                trust_remote_code=m.trust_remote_code, revision=m.revision)
            if tok.pad_token_id is None:
                tok.pad_token = tok.unk_token or tok.eos_token
            return tok
        except Exception:  # offline hub models: the plan notes that lengths were not checked
            return None

    # ---- run -----------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        from recipes.sft.data import encode_examples
        from runner import hardware
        from runner.models import count_params, load_model

        cfg = self.cfg
        precision = hardware.resolve_precision(cfg.hardware)
        model, tokenizer = load_model(cfg.model, cfg.hardware, cfg.cache_dir,
                                      precision=hardware.weights_precision(cfg, precision))
        metrics: dict[str, float] = {}

        if cfg.method.name == "slam" and isinstance(cfg.method.layers, str):
            self.slam_layers = self.analyze_layers(model, tokenizer)
            metrics["train/slam_layers"] = str(self.slam_layers)
        model = self.select_parameters(model)
        total, trainable = count_params(model)
        if cfg.method.name == "lora":
            total -= trainable
        metrics.update({"train/total_params": total, "train/trainable_params": trainable,
                        "train/trainable_fraction": trainable / total if total else 0.0})

        if self.trains:
            enc = self._plan_encoding or encode_examples(self.train_examples(), tokenizer, cfg.data,
                                                         cfg.method.use_chat_template, cfg.train.max_seq_len)
            if not enc.rows:
                raise ConfigError(f"no training row fits train.max_seq_len={cfg.train.max_seq_len} tokens (longest "
                                  f"{enc.max_len}); raise train.max_seq_len.")
            metrics["train/rows"] = len(enc.rows)
            metrics["train/dropped_rows"] = enc.dropped
            model, train_metrics = self.train_model(model, tokenizer, enc.rows)
            metrics.update(train_metrics)
        metrics.update(self.evaluate(model, tokenizer))
        return metrics

    def train_model(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]], *, trainer_cls: Any = None,
                    output_dir: Any = None, prefix: str = "train", periodic_eval: bool = True,
                    resume: bool | None = None, **trainer_kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """Train ``model`` on encoded ``rows`` with the HF ``Trainer`` (``trainer_cls``, a :class:`RunnerTrainer`
        subclass); resume, periodic evaluation and the final checkpoint as ``train.*`` says.

        Args:
            rows: ``{"input_ids", "labels", ...}`` dicts (extra numeric fields reach the batch as tensors).
            trainer_cls: the trainer class (default :class:`runner.trainer.RunnerTrainer`).
            output_dir: where ``step-N`` checkpoints go (default ``<run dir>/checkpoints``).
            prefix: key prefix of the logged and returned metrics (``train``, ``train/stage1``...).
            periodic_eval: run the math evaluation every ``train.eval_steps`` steps.
            resume: continue from the latest checkpoint in ``output_dir`` (None: as ``resume`` says).
            trainer_kwargs: passed to the trainer's constructor.

        With ``train.padding_free`` (and the default trainer, whose loss is the model's own), micro-batches are
        flattened into one row and attention runs per sequence (:mod:`runner.padding_free`); otherwise rows are
        right-padded. The trainer is kept as ``self.last_trainer``.

        Returns:
            (the trained model, ``{prefix}/loss``, ``/steps``, ``/loss_first``, ``/loss_last``, ``/final_checkpoint``).

        Raises:
            RunDirError: ``resume=true`` without a checkpoint to resume from.
        """
        from recipes.sft.data import CompletionCollator
        from runner import hardware, padding_free
        from runner.trainer import MetricsCallback, RichProgressCallback, RunnerTrainer, training_arguments

        cfg = self.cfg
        output_dir = output_dir or self.run_dir / "checkpoints"
        precision = hardware.resolve_precision(cfg.hardware)
        args = training_arguments(cfg, precision, output_dir)
        metrics_cb, progress_cb = MetricsCallback(self.metrics, prefix=prefix), RichProgressCallback()
        flatten = cfg.train.padding_free and trainer_cls is None and padding_free.applies(model)
        collate = padding_free.collator() if flatten else CompletionCollator(tokenizer.pad_token_id)
        trainer = (trainer_cls or RunnerTrainer)(model=model, args=args, train_dataset=rows, data_collator=collate,
                                                 processing_class=tokenizer, callbacks=[metrics_cb, progress_cb],
                                                 **trainer_kwargs)
        trainer.keep_last_n = cfg.train.keep_last_n
        eval_cb = self._periodic_eval_callback(tokenizer) if periodic_eval else None
        if eval_cb is not None:
            trainer.add_callback(eval_cb)
        resume_from = None
        if cfg.resume if resume is None else resume:
            from runner import checkpoint

            resume_from = checkpoint.latest(output_dir)
            if resume_from is None:
                raise RunDirError(f"resume=true but '{output_dir}' holds no complete checkpoint (step-N); start a new "
                                  "run instead, or set train.save_steps so runs leave checkpoints to resume from.")
            checkpoint.clean_temporary(output_dir)
            log.info("resuming from %s", resume_from)
        varlen = padding_free.attention(model) if flatten else contextlib.nullcontext()
        try:
            with varlen:
                result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        finally:
            progress_cb.on_train_end(None, None, None)
        metrics: dict[str, Any] = {f"{prefix}/loss": float(result.training_loss),
                                   f"{prefix}/steps": int(trainer.state.global_step)}
        if "train_runtime" in result.metrics:  # absent when a resumed run had no step left to train
            metrics[f"{prefix}/runtime_s"] = float(result.metrics["train_runtime"])
        if metrics_cb.losses:
            metrics[f"{prefix}/loss_first"] = metrics_cb.losses[0][1]
            metrics[f"{prefix}/loss_last"] = metrics_cb.losses[-1][1]
        if cfg.train.save_final:
            metrics[f"{prefix}/final_checkpoint"] = str(trainer.save_final())
        self.last_trainer = trainer
        return trainer.model, metrics

    def analyze_layers(self, model: Any, tokenizer: Any) -> list[int]:
        """SLAM's layer analysis on a multilingual sample; writes ``slam_layers.json``; returns the chosen layers."""
        from recipes.sft.data import encode_prompt
        from recipes.sft.slam import activation_rates, choose_layers, layer_statistics

        m, d = self.cfg.method, self.cfg.data
        split = d.train_split or d.eval_split
        examples = data_lib.load_split(d, split, max_per_lang=m.analysis_samples)
        langs = list(m.analysis_languages) or sorted({ex.lang for ex in examples})
        batches = {g: [encode_prompt(ex.question, tokenizer, False)[: self.cfg.train.max_seq_len]
                       for ex in examples if ex.lang == g] for g in langs}
        batches = {g: v for g, v in batches.items() if v}
        if len(batches) < 2:
            raise ConfigError(f"method.layers=auto needs a sample in at least 2 languages; data={d.name} split "
                              f"'{split}' gave {sorted(batches)}. Choose multilingual data or list method.layers.")
        rates = activation_rates(model, batches, tokenizer.pad_token_id)
        stats = layer_statistics(rates, list(batches))
        chosen = choose_layers(stats["msd"], m.auto_num_layers)
        self.run_dir.write_json("slam_layers.json", {
            "definition": "msd[l] = mean_j mean_g (rate[l,g,j] - mean_g rate[l,.,j])^2; rate = share of language "
                          "g's tokens with act_fn(gate_proj(x))_j > 0 (see recipes/sft/slam.py)",
            "languages": list(batches), "samples_per_language": m.analysis_samples, "chosen_layers": chosen,
            **stats})
        log.info("SLAM layer analysis chose layers %s (msd %s)", chosen, [round(x, 5) for x in stats["msd"]])
        return chosen

    def eval_prompts(self, tokenizer: Any) -> tuple[list[data_lib.Example], list[str], list[list[int]]]:
        from recipes.sft.data import encode_prompt, prompt_text

        examples = self.eval_examples()
        use_chat = self.cfg.method.use_chat_template
        texts = [prompt_text(data_lib.render(ex, self.cfg.data)[0], tokenizer, use_chat) for ex in examples]
        return examples, texts, [encode_prompt(t, tokenizer, use_chat) for t in texts]

    def stop_strings(self) -> list[str]:
        """Outputs are cut where the model starts a new problem (the prompt template's text before the question)."""
        if self.cfg.method.use_chat_template:
            return []
        head = self.cfg.data.prompt_template.split("{question}")[0].strip()
        return ["\n" + head] if head else []

    def evaluate(self, model: Any, tokenizer: Any, step: int | None = None) -> dict[str, float]:
        from runner.evaluate import evaluate_math

        examples, texts, ids = self.eval_prompts(tokenizer)
        if not examples:
            return {}
        name = "predictions.jsonl" if step is None else f"predictions-step-{step}.jsonl"
        return evaluate_math(model, tokenizer, examples, texts, ids, self.cfg.eval, self.run_dir,
                             seed=int(self.cfg.seed), predictions_file=name, stop_strings=self.stop_strings(),
                             answer_match=self.cfg.data.answer_match)

    def _periodic_eval_callback(self, tokenizer: Any) -> Any:
        if self.cfg.train.eval_steps <= 0 or not self.eval_examples():
            return None
        from transformers import TrainerCallback

        recipe = self

        class PeriodicEval(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                if state.global_step % recipe.cfg.train.eval_steps == 0 and state.global_step < state.max_steps:
                    metrics = recipe.evaluate(model, tokenizer, step=state.global_step)
                    recipe.metrics.log(metrics, step=state.global_step)

        return PeriodicEval()

