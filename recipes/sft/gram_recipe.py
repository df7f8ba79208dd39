"""GRAM's two stages on preference pairs (``method=gram``, ``method.stage=1|2|all``) and its pairwise evaluation.

* Stage 1 (:func:`recipes.sft.gram.pretrain_row`): completion-only SFT of the question -> both responses, with the
  runner's trainer and the model's own loss; checkpoints in ``checkpoints/stage1/step-N``.
* Stage 2 (:func:`recipes.sft.gram.judge_row`, :class:`GramTrainer`): the judge prompt -> ``A``/``B``, trained with
  :func:`recipes.sft.gram.gram_loss`; checkpoints in ``checkpoints/stage2/step-N``. It starts from stage 1's weights
  (``stage=all``), from ``method.init_from`` (a stage-1 run dir or checkpoint), or from ``model``.
* Evaluation: :func:`recipes.sft.gram.gram_scores` on the evaluation pairs (both orders averaged);
  ``eval/pairwise_accuracy`` is the share of pairs whose chosen response scores higher (per subset too when there
  are several), written pair by pair to ``predictions.jsonl``.

Pairs come from :func:`runner.pairs.load_pair_split` (``data=hh_rlhf`` or a ``pairs_jsonl`` data config).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from recipes.base import Plan
from recipes.sft.gram import (
    gram_loss,
    gram_scores,
    judge_prompt_ids,
    judge_row,
    label_token_ids,
    pair_orders,
    pairwise_accuracy,
    pretrain_row,
)
from recipes.sft.recipe import SFTRecipe
from runner import checkpoint
from runner.config import steps_for
from runner.errors import ConfigError, DataError, ModelError, RunDirError, RunnerError
from runner.pairs import PAIR_FORMATS, PreferencePair, load_pair_split
from runner.trainer import RunnerTrainer

log = logging.getLogger("runner.gram")


class GramTrainer(RunnerTrainer):
    """The runner's trainer with GRAM's stage-2 loss (:func:`recipes.sft.gram.gram_loss`): label-smoothed
    cross-entropy over the ``A``/``B`` logits at the position before the label token. The loss is a mean over the
    micro-batch's rows, so the Trainer divides it by the grad-accumulation steps (``loss_is_scaled_for_ga=False``)."""

    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, candidate_ids: tuple[int, int], label_smoothing: float, **kwargs: Any):
        self.candidate_ids = tuple(candidate_ids)
        self.label_smoothing = float(label_smoothing)
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
        loss = gram_loss(outputs.logits, inputs["labels"], self.candidate_ids, self.label_smoothing)
        return (loss, outputs) if return_outputs else loss


class GramRecipe(SFTRecipe):
    """GRAM in the SFT family (see the module docstring)."""

    # ---- stages and data -----------------------------------------------------------------------------------------
    @property
    def stages(self) -> list[int]:
        stage = str(self.cfg.method.stage)
        return [1, 2] if stage == "all" else [int(stage)]

    @property
    def trains(self) -> bool:
        return self.cfg.train.max_steps != 0

    def resume_point(self) -> Any:
        """The latest checkpoint of the last stage that saved one (``checkpoints/stage<k>/step-N``); each stage then
        resumes from its own latest checkpoint (a finished stage takes no step)."""
        from runner.checkpoint import find_resume_point, latest

        dirs = [self.run_dir / "checkpoints" / f"stage{s}" for s in self.stages]
        started = [d for d in dirs if latest(d) is not None] or dirs[:1]
        return find_resume_point(self.run_dir.path, self.cfg, root=started[-1])

    def train_pairs(self) -> list[PreferencePair]:
        d = self.cfg.data
        if not self.trains:
            return []
        if d.train_split is None:
            raise ConfigError(f"data={d.name} has no train split (data.train_split is null) but GRAM trains; set "
                              "data.train_split (e.g. helpful-base/test for the local HH-RLHF copy) or "
                              "train.max_steps=0 to evaluate only.")
        return load_pair_split(d, d.train_split, d.max_samples)

    def eval_pairs(self) -> list[PreferencePair]:
        split = self.cfg.eval.split or self.cfg.data.eval_split
        if not self.cfg.eval.enabled or split is None:
            return []
        return load_pair_split(self.cfg.data, split, self.cfg.eval.max_samples)

    def check_data(self) -> None:
        if self.cfg.data.format not in PAIR_FORMATS:
            raise ConfigError(f"GRAM trains on preference pairs but data={self.cfg.data.name} has format "
                              f"'{self.cfg.data.format}'; use data=hh_rlhf or a data config with format "
                              f"{' or '.join(PAIR_FORMATS)}.")

    def init_checkpoint(self) -> Path | None:
        """The weights stage 2 starts from when run alone: ``method.init_from`` resolved to a checkpoint dir.

        Raises:
            ConfigError: ``method.init_from`` holds no checkpoint.
        """
        init = self.cfg.method.init_from
        if init is None or self.stages != [2]:
            return None
        root = Path(str(init))
        for candidate in (checkpoint.latest(root / "checkpoints" / "stage1"), checkpoint.latest(root),
                          root if (root / "config.json").exists() else None):
            if candidate is not None:
                return candidate
        raise ConfigError(f"'method.init_from' is '{root}', which holds no checkpoint: give a stage-1 run dir (with "
                          "checkpoints/stage1/step-N) or a checkpoint dir with config.json and safetensors weights.")

    def stage_rows(self, stage: int, pairs: list[PreferencePair], tokenizer: Any) -> tuple[list[dict], int, int]:
        """(rows, dropped over train.max_seq_len, longest) of ``stage`` from ``pairs`` laid out as
        ``method.pair_order`` says."""
        m = self.cfg.method
        use_chat = m.use_chat_template
        orders = pair_orders(len(pairs), m.pair_order, int(self.cfg.seed) + stage)
        rows, dropped, longest = [], 0, 0
        label_ids = label_token_ids(tokenizer) if stage == 2 else None
        for pair, flips in zip(pairs, orders):
            for chosen_first in flips:
                a, b = (pair.chosen, pair.rejected) if chosen_first else (pair.rejected, pair.chosen)
                if stage == 1:
                    row = pretrain_row(pair.prompt, a, b, tokenizer, use_chat, m.pretrain_prompt_template,
                                       m.pretrain_output_template)
                else:
                    ids = judge_prompt_ids(pair.prompt, a, b, tokenizer, use_chat, m.judge_template)
                    row = judge_row(ids, label_ids[0] if chosen_first else label_ids[1])
                longest = max(longest, len(row["input_ids"]))
                if len(row["input_ids"]) > self.cfg.train.max_seq_len:
                    dropped += 1
                    continue
                rows.append(row)
        return rows, dropped, longest

    # ---- plan ----------------------------------------------------------------------------------------------------
    def plan(self) -> Plan:
        cfg = self.cfg
        plan = self.plan_parameters()
        plan.extra["stages"] = ",".join(str(s) for s in self.stages)
        try:
            self.check_data()
            self.init_checkpoint()
            pairs, evals = self.train_pairs(), self.eval_pairs()
            plan.eval_rows = len(evals)
            plan.extra["train_pairs"] = len(pairs)
            tokenizer = self._tokenizer_for_plan()
            steps = 0
            for stage in self.stages if self.trains else []:
                if tokenizer is not None:
                    rows, dropped, longest = self.stage_rows(stage, pairs, tokenizer)
                    n = len(rows)
                    plan.extra[f"stage{stage}_longest_row_tokens"] = longest
                    if dropped:
                        plan.notes.append(f"stage {stage}: {dropped} rows longer than train.max_seq_len="
                                          f"{cfg.train.max_seq_len} tokens are dropped")
                    if not n and pairs:
                        plan.problems.append(f"stage {stage}: every row is longer than train.max_seq_len="
                                             f"{cfg.train.max_seq_len} tokens (longest {longest}); raise it.")
                else:
                    n = len(pairs) * (2 if cfg.method.pair_order == "both" else 1)
                    plan.notes.append("row lengths not checked: the tokenizer is not available offline")
                plan.extra[f"stage{stage}_rows"] = n
                plan.train_rows += n
                steps += steps_for(n, cfg)
            plan.steps = steps
        except RunnerError as ex:
            plan.problems.append(ex.paragraph())
        return self.plan_memory(plan)

    # ---- run -----------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from omegaconf import OmegaConf

        from runner import hardware
        from runner.models import count_params, load_model

        cfg, m = self.cfg, self.cfg.method
        self.check_data()
        model_cfg = cfg.model
        init = self.init_checkpoint()
        if init is not None:
            model_cfg = OmegaConf.merge(cfg.model, {"path": str(init)})
            log.info("stage 2 starts from %s", init)
        model, tokenizer = load_model(model_cfg, cfg.hardware, cfg.cache_dir,
                                      precision=hardware.resolve_precision(cfg.hardware))
        candidate_ids = label_token_ids(tokenizer)  # before any training: a tokenizer that splits A/B fails now
        model = self.select_parameters(model)
        total, trainable = count_params(model)
        metrics: dict[str, Any] = {"train/total_params": total, "train/trainable_params": trainable,
                                   "train/trainable_fraction": trainable / total if total else 0.0}
        if init is not None:
            metrics["train/init_from"] = str(init)
        pairs = self.train_pairs()
        stage_dirs = {s: self.run_dir / "checkpoints" / f"stage{s}" for s in self.stages}
        if cfg.resume and not any(checkpoint.latest(d) for d in stage_dirs.values()):
            raise RunDirError(f"resume=true but '{self.run_dir / 'checkpoints'}' holds no stage checkpoint; start a new "
                              "run instead.")
        for stage in self.stages if self.trains else []:
            rows, dropped, _ = self.stage_rows(stage, pairs, tokenizer)
            if not rows:
                raise DataError(f"GRAM stage {stage}: no training row fits train.max_seq_len={cfg.train.max_seq_len} "
                                "tokens; raise train.max_seq_len or use shorter pairs.")
            prefix = f"train/stage{stage}"
            metrics[f"{prefix}/rows"], metrics[f"{prefix}/dropped_rows"] = len(rows), dropped
            kwargs: dict[str, Any] = {}
            if stage == 2:
                kwargs = {"trainer_cls": GramTrainer, "candidate_ids": candidate_ids,
                          "label_smoothing": float(m.label_smoothing)}
            resume = bool(cfg.resume and checkpoint.latest(stage_dirs[stage]))
            model, stage_metrics = self.train_model(model, tokenizer, rows, output_dir=stage_dirs[stage],
                                                    prefix=prefix, periodic_eval=False, resume=resume, **kwargs)
            metrics.update(stage_metrics)
        metrics.update(self.evaluate_pairs(model, tokenizer))
        return metrics

    def evaluate_pairs(self, model: Any, tokenizer: Any) -> dict[str, Any]:
        """Pairwise accuracy of the readout on the evaluation pairs; writes ``predictions.jsonl``.

        Comparisons longer than the model's context (``max_position_embeddings``) are skipped and counted.
        """
        pairs = self.eval_pairs()
        if not pairs:
            return {}
        m = self.cfg.method
        max_len = getattr(model.config, "max_position_embeddings", None)
        scores = gram_scores(model, tokenizer, [p.prompt for p in pairs], [p.chosen for p in pairs],
                             [p.rejected for p in pairs], use_chat_template=m.use_chat_template,
                             template=m.judge_template, batch_size=int(self.cfg.eval.batch_size), max_len=max_len)
        records, by_subset = [], defaultdict(list)
        for pair, s in zip(pairs, scores):
            row: dict[str, Any] = {"id": pair.id, "subset": pair.subset, "skipped": s is None}
            if s is not None:
                row.update(score_chosen=s[0], score_rejected=s[1], correct=s[0] > s[1])
                by_subset[pair.subset].append(s)
            records.append(row)
        self.run_dir.write_jsonl("predictions.jsonl", records)
        scored = [s for s in scores if s is not None]
        if not scored:
            raise ModelError(f"no evaluation pair fits the model's context of {max_len} tokens; use shorter pairs or "
                             "a model with a longer context.")
        out: dict[str, Any] = {"eval/pairwise_accuracy": pairwise_accuracy(scored), "eval/pairs": len(scored),
                               "eval/skipped_pairs": len(pairs) - len(scored),
                               "eval/score_chosen_mean": math.fsum(s[0] for s in scored) / len(scored)}
        if len(by_subset) > 1:
            for subset, ss in sorted(by_subset.items()):
                out[f"eval/pairwise_accuracy/{subset}"] = pairwise_accuracy(ss)
        return out
