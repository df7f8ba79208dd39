"""OXA as runnable stages (``method=oxa``, ``method.stage=score|promote|suppress|train|all``).

Each stage writes its artifact under ``<run dir>/oxa/``; a later stage reads it from its own run dir or from the run
dirs listed in ``method.from_runs`` (searched in order), so the pipeline runs in one go (``stage=all``) or one stage
per run:

1. ``score`` -> ``oxa/scores.jsonl``: every teacher response of the training split (the rendered completion, e.g.
   GSM8K's reference solution), its PPL under the base model on the response tokens alone
   (:func:`recipes.sft.oxa.sequence_perplexities`), its length, and whether its answer verifies against the gold one
   (math-verify).
2. ``promote`` -> ``oxa/promote.jsonl`` (+ ``oxa/promote_bins.json``): the verified responses chosen by
   :func:`recipes.sft.oxa.select_promote` (truncated-Gaussian PPL bins, longest first, ``per_query`` cap).
3. ``suppress`` -> ``oxa/samples.jsonl`` (every sample) and ``oxa/suppress.jsonl``: ``num_generations`` samples per
   training prompt from the base model, checked against the gold answer with math-verify; the incorrect ones are
   PPL-scored and filtered by :func:`recipes.sft.oxa.select_suppress`.
4. ``train``: CE on the promote rows + ``ul_weight`` x unlikelihood on the suppress rows
   (:func:`recipes.sft.oxa.oxa_loss`), ``ul_per_global_batch`` suppress rows in every global batch
   (:class:`recipes.sft.oxa.MixedLossTypeSampler`), ``train/ce_loss`` and ``train/ul_loss`` logged; then the usual
   evaluation (Pass@k with ``eval.num_samples``).

With ``ul_per_global_batch=0`` the suppress stage is skipped and training sees the promote set alone (OXA_MLE).
``resume=true`` skips the stages whose artifact is already in the run dir and continues training from the latest
checkpoint.
"""

from __future__ import annotations

import logging
import math
import statistics
from pathlib import Path
from typing import Any

from recipes.base import Plan
from recipes.sft.oxa import CE, UL, Candidate, MixedLossTypeSampler, oxa_loss, select_promote, select_suppress
from recipes.sft.recipe import SFTRecipe
from runner import data as data_lib
from runner.config import global_batch_size, world_size
from runner.errors import ConfigError, DataError, RunnerError
from runner.trainer import RunnerTrainer

log = logging.getLogger("runner.oxa")

ARTIFACTS = {"scores": "oxa/scores.jsonl", "promote": "oxa/promote.jsonl", "samples": "oxa/samples.jsonl",
             "suppress": "oxa/suppress.jsonl"}
"""Artifact name -> path under a run dir."""
PRODUCES = {"score": "scores", "promote": "promote", "suppress": "suppress"}
NEEDS = {"promote": ["scores"], "train": ["promote", "suppress"]}


class OxaTrainer(RunnerTrainer):
    """The runner's trainer with OXA's loss and sampler.

    * ``_get_train_sampler``: :class:`MixedLossTypeSampler` (``ul_per_batch`` UL rows in every global batch).
    * ``compute_loss``: :func:`oxa_loss` with N_ce = G - u and N_ul = u, the counts of the global batch, so the
      micro-batch losses of one optimizer step add up to OXA's loss of the global batch; multiplied by the world size
      to undo DDP's gradient averaging (OXA's code rescales the same way). The loss is already normalised over the
      accumulated batch (``loss_is_scaled_for_ga``).
    * ``log``: adds ``ce_loss`` (mean per-row CE of the promote rows) and ``ul_loss`` (mean per-row unlikelihood of the
      suppress rows, unweighted) since the last log, seen by this process.
    """

    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, loss_types: list[int], ul_weight: float, ul_per_batch: int,
                 global_batch_size: int, sampler_seed: int = 0, **kwargs: Any):
        self.loss_types = list(loss_types)
        self.ul_weight = float(ul_weight)
        self.ul_per_batch = int(ul_per_batch)
        self.global_batch = int(global_batch_size)
        self.sampler_seed = int(sampler_seed)
        self._parts = [0.0, 0, 0.0, 0]
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        return MixedLossTypeSampler(self.loss_types, self.global_batch, self.ul_per_batch, seed=self.sampler_seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        loss_type = inputs.pop("loss_type")
        labels = inputs.pop("labels")
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
        res = oxa_loss(outputs.logits, labels, loss_type, self.ul_weight,
                       n_ce=self.global_batch - self.ul_per_batch, n_ul=self.ul_per_batch)
        if model.training:
            self._parts[0] += res.ce_sum
            self._parts[1] += res.ce_rows
            self._parts[2] += res.ul_sum
            self._parts[3] += res.ul_rows
        loss = res.loss * self.args.world_size
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, start_time=None):
        if "loss" in logs:
            ce_sum, ce_n, ul_sum, ul_n = self._parts
            if ce_n:
                logs["ce_loss"] = ce_sum / ce_n
            if ul_n:
                logs["ul_loss"] = ul_sum / ul_n
            self._parts = [0.0, 0, 0.0, 0]
        super().log(logs, start_time)


class OxaRecipe(SFTRecipe):
    """OXA's pipeline in the SFT family (see the module docstring)."""

    # ---- stages and artifacts ------------------------------------------------------------------------------------
    @property
    def uses_suppress(self) -> bool:
        return int(self.cfg.method.ul_per_global_batch) > 0

    @property
    def stages(self) -> list[str]:
        stage = str(self.cfg.method.stage)
        if stage != "all":
            return [stage]
        return ["score", "promote"] + (["suppress"] if self.uses_suppress else []) + ["train"]

    @property
    def trains(self) -> bool:
        return "train" in self.stages and self.cfg.train.max_steps != 0

    def resume_point(self) -> Any:
        """The latest training checkpoint; None when training has not saved one yet (``resume=true`` then skips the
        stages whose artifact is already here and trains from the start)."""
        from runner.checkpoint import latest

        if latest(self.run_dir / "checkpoints") is None:
            return None
        return super().resume_point()

    def train_examples(self) -> list[data_lib.Example]:
        """The teacher rows (prompt, response, gold answer) of the training split: read by ``score`` and
        ``suppress``; other stages read artifacts instead."""
        if self._train_examples is None:
            d = self.cfg.data
            if not {"score", "suppress"} & set(self.stages):
                self._train_examples = []
            elif d.train_split is None:
                raise ConfigError(f"method.stage={self.cfg.method.stage} reads the training split but data={d.name} "
                                  "has none (data.train_split is null).")
            else:
                self._train_examples = data_lib.load_split(d, d.train_split, max_total=d.max_samples)
        return self._train_examples

    def eval_examples(self) -> list[data_lib.Example]:
        if "train" not in self.stages:
            return []
        return super().eval_examples()

    def find(self, name: str) -> Path | None:
        """The artifact ``name`` from this run dir, else from the first of ``method.from_runs`` holding it."""
        rel = ARTIFACTS[name]
        for root in [self.run_dir.path, *[Path(str(p)) for p in self.cfg.method.from_runs]]:
            if (root / rel).exists():
                return root / rel
        return None

    def missing_inputs(self) -> list[str]:
        """Problems: artifacts a stage of this run needs that neither an earlier stage of the run nor
        ``method.from_runs`` provides."""
        produced: set[str] = set()
        problems = []
        for stage in self.stages:
            for need in NEEDS.get(stage, []):
                if need == "suppress" and not self.uses_suppress:
                    continue
                if need not in produced and self.find(need) is None:
                    maker = {v: k for k, v in PRODUCES.items()}[need]
                    places = ", ".join(str(p) for p in self.cfg.method.from_runs) or "none given"
                    problems.append(f"method.stage={stage} needs '{ARTIFACTS[need]}', which is neither in this run dir "
                                    f"nor in method.from_runs ({places}); run method.stage={maker} first and pass "
                                    f"its run dir as method.from_runs=[DIR], or use method.stage=all.")
            if stage in PRODUCES:
                produced.add(PRODUCES[stage])
        return problems

    def _read(self, name: str) -> list[dict[str, Any]]:
        path = self.find(name)
        if path is None:
            raise DataError(self.missing_inputs()[0] if self.missing_inputs() else f"'{ARTIFACTS[name]}' not found.")
        return data_lib.read_jsonl(path) if path.stat().st_size else []

    # ---- plan ----------------------------------------------------------------------------------------------------
    def plan(self) -> Plan:
        cfg, m = self.cfg, self.cfg.method
        plan = self.plan_parameters()
        plan.extra["stages"] = ",".join(self.stages)
        plan.problems.extend(self.missing_inputs())
        try:
            teacher = self.train_examples()
            plan.eval_rows = len(self.eval_examples())
            if teacher:
                plan.extra["teacher_rows"] = len(teacher)
        except RunnerError as ex:
            plan.problems.append(ex.paragraph())
            teacher = []
        if self.trains:
            n_ce = self._count("promote") if "promote" not in self.stages else min(m.promote.size, len(teacher))
            n_ul = 0
            if self.uses_suppress:
                n_ul = (self._count("suppress") if "suppress" not in self.stages
                        else min(m.suppress.size, len(teacher)))
            plan.train_rows = n_ce + n_ul
            g, u = global_batch_size(cfg), int(m.ul_per_global_batch)
            per_epoch = math.ceil(n_ce / (g - u)) if g > u else 0
            plan.steps = cfg.train.max_steps if cfg.train.max_steps > 0 else math.ceil(cfg.train.epochs * per_epoch)
            plan.extra["promote_rows"] = n_ce
            plan.extra["suppress_rows"] = n_ul
            plan.notes.append(f"each global batch of {g} rows holds {u} suppress rows; an epoch is one pass over the "
                              "promote rows (row counts not yet selected are upper bounds); OXA's sampler replaces "
                              "train.batching")
        return self.plan_memory(plan)

    def _count(self, name: str) -> int:
        path = self.find(name)
        return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()) if path else 0

    # ---- run -----------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from runner import hardware
        from runner.models import count_params, load_model

        cfg = self.cfg
        problems = self.missing_inputs()
        if problems:
            raise ConfigError("OXA cannot run these stages:", problems)
        model = tokenizer = None
        if set(self.stages) - {"promote"}:  # the promote stage reads scores only
            model, tokenizer = load_model(cfg.model, cfg.hardware, cfg.cache_dir,
                                          precision=hardware.resolve_precision(cfg.hardware))
            model = self.select_parameters(model)
        metrics: dict[str, Any] = {}
        for stage in self.stages:
            done = PRODUCES.get(stage)
            if cfg.resume and done and (self.run_dir / ARTIFACTS[done]).exists():
                log.info("OXA stage %s: resuming, %s is already here", stage, ARTIFACTS[done])
                continue
            log.info("OXA stage %s", stage)
            if stage == "score":
                metrics.update(self.stage_score(model, tokenizer))
            elif stage == "promote":
                metrics.update(self.stage_promote())
            elif stage == "suppress":
                metrics.update(self.stage_suppress(model, tokenizer))
            elif stage == "train":
                total, trainable = count_params(model)
                metrics.update({"train/total_params": total, "train/trainable_params": trainable,
                                "train/trainable_fraction": trainable / total if total else 0.0})
                model, train_metrics = self.stage_train(model, tokenizer)
                metrics.update(train_metrics)
                metrics.update(self.evaluate(model, tokenizer))
        return metrics

    def _ppl(self, model: Any, tokenizer: Any, texts: list[str]) -> list[tuple[float, int, int]]:
        """(PPL, scored tokens, full length in tokens) of each text alone, truncated to ``train.max_seq_len``."""
        from recipes.sft.oxa import sequence_perplexities

        ids = [list(tokenizer(t)["input_ids"]) for t in texts]
        cap = int(self.cfg.train.max_seq_len)
        scored = sequence_perplexities(model, [x[:cap] for x in ids], tokenizer.pad_token_id,
                                       int(self.cfg.method.ppl_batch_size))
        return [(ppl, n, len(x)) for (ppl, n), x in zip(scored, ids)]

    def stage_score(self, model: Any, tokenizer: Any) -> dict[str, Any]:
        """PPL of every teacher response under the base model; writes ``oxa/scores.jsonl``."""
        from runner.metrics import math_verify_match, parse_gold

        examples = self.train_examples()
        rendered = [data_lib.render(ex, self.cfg.data) for ex in examples]
        ppls = self._ppl(model, tokenizer, [r for _, r in rendered])
        rows = []
        for ex, (prompt, response), (ppl, scored, length) in zip(examples, rendered, ppls):
            _, verified = math_verify_match(response, parse_gold(ex.answer))
            rows.append({"id": ex.id, "query": ex.question, "prompt": prompt, "response": response,
                         "answer": ex.answer, "ppl": ppl, "scored_tokens": scored, "n_tokens": length,
                         "verified": verified})
        self.run_dir.write_jsonl(ARTIFACTS["scores"], rows)
        finite = [r["ppl"] for r in rows if math.isfinite(r["ppl"])]
        return {"oxa/scored": len(rows), "oxa/teacher_verified": sum(r["verified"] for r in rows),
                "oxa/score_ppl_mean": statistics.fmean(finite) if finite else float("nan"),
                "oxa/score_ppl_median": statistics.median(finite) if finite else float("nan")}

    def stage_promote(self) -> dict[str, Any]:
        """The truncated-Gaussian selection over the verified scored responses; writes ``oxa/promote.jsonl`` and the
        per-bin targets and counts in ``oxa/promote_bins.json``."""
        p = self.cfg.method.promote
        rows = [r for r in self._read("scores") if r.get("verified", True)]
        cands = [Candidate(str(r["query"]), float(r["ppl"]), int(r["n_tokens"])) for r in rows]
        chosen, targets, got = select_promote(cands, int(p.size), mu=p.mu, sigma=p.sigma, ppl_min=p.ppl_min,
                                              ppl_max=p.ppl_max, bin_width=p.bin_width, per_query=int(p.per_query),
                                              seed=int(self.cfg.seed))
        self.run_dir.write_jsonl(ARTIFACTS["promote"], [{**rows[i], "loss_type": CE} for i in chosen])
        bins = [{"ppl_from": p.ppl_min + b * p.bin_width, "ppl_to": p.ppl_min + (b + 1) * p.bin_width,
                 "target": t, "selected": g} for b, (t, g) in enumerate(zip(targets, got))]
        self.run_dir.write_json("oxa/promote_bins.json", {"mu": p.mu, "sigma": p.sigma, "size": p.size, "bins": bins})
        shortage = int(p.size) - len(chosen)
        if shortage:
            log.warning("promote set: %d of %d selected (%d candidates in [%s, %s]); bins short of candidates stay "
                        "short", len(chosen), p.size, len(cands), p.ppl_min, p.ppl_max)
        sel = [cands[i].ppl for i in chosen]
        return {"oxa/promote_candidates": len(cands), "oxa/promote_rows": len(chosen),
                "oxa/promote_shortage": shortage,
                "oxa/promote_ppl_mean": statistics.fmean(sel) if sel else float("nan")}

    def stage_suppress(self, model: Any, tokenizer: Any) -> dict[str, Any]:
        """Sample from the base model, verify with math-verify, PPL-score the incorrect samples, keep the most
        confident; writes ``oxa/samples.jsonl`` and ``oxa/suppress.jsonl``."""
        from recipes.sft.data import encode_prompt, prompt_text
        from runner.generate import generate
        from runner.metrics import math_verify_match, parse_gold

        cfg, s = self.cfg, self.cfg.method.suppress
        use_chat = cfg.method.use_chat_template
        examples = self.train_examples()
        prompts = [data_lib.render(ex, cfg.data)[0] for ex in examples]
        ids = [encode_prompt(prompt_text(p, tokenizer, use_chat), tokenizer, use_chat) for p in prompts]
        outputs = generate(model, tokenizer, ids, max_new_tokens=int(s.max_new_tokens),
                           batch_size=int(cfg.eval.batch_size), temperature=float(s.temperature), top_p=float(s.top_p),
                           num_samples=int(s.num_generations), seed=int(cfg.seed), stop_strings=self.stop_strings(),
                           description="oxa samples")
        samples = []
        for ex, prompt, outs in zip(examples, prompts, outputs):
            gold = parse_gold(ex.answer)
            for k, text in enumerate(outs):
                extracted, ok = math_verify_match(text, gold)
                samples.append({"id": ex.id, "query": ex.question, "sample": k, "prompt": prompt, "response": text,
                                "extracted": extracted, "gold": ex.answer, "correct": ok})
        wrong = [r for r in samples if not r["correct"] and r["response"].strip()]
        for r, (ppl, _, length) in zip(wrong, self._ppl(model, tokenizer, [r["response"] for r in wrong])):
            r["ppl"], r["n_tokens"] = ppl, length
        cands = [Candidate(r["query"], float(r["ppl"]), int(r["n_tokens"])) for r in wrong]
        chosen = select_suppress(cands, int(s.size), min_ppl=float(s.min_ppl), max_tokens=s.max_tokens,
                                 per_query=int(s.per_query))
        self.run_dir.write_jsonl(ARTIFACTS["samples"], samples)
        self.run_dir.write_jsonl(ARTIFACTS["suppress"], [{**wrong[i], "loss_type": UL} for i in chosen])
        sel = [cands[i].ppl for i in chosen]
        return {"oxa/samples": len(samples), "oxa/samples_correct": sum(r["correct"] for r in samples),
                "oxa/suppress_candidates": len(wrong), "oxa/suppress_rows": len(chosen),
                "oxa/suppress_ppl_mean": statistics.fmean(sel) if sel else float("nan")}

    def stage_train(self, model: Any, tokenizer: Any) -> tuple[Any, dict[str, Any]]:
        """CE on the promote rows + ``ul_weight`` x UL on the suppress rows, with :class:`OxaTrainer`."""
        from recipes.sft.data import encode_pair

        cfg, m = self.cfg, self.cfg.method
        sources = [(r, CE) for r in self._read("promote")]
        if self.uses_suppress:
            sources += [(r, UL) for r in self._read("suppress")]
        rows, dropped = [], 0
        for r, loss_type in sources:
            enc = encode_pair(r["prompt"], r["response"], tokenizer, m.use_chat_template)
            if len(enc["input_ids"]) > cfg.train.max_seq_len:
                dropped += 1
                continue
            rows.append({**enc, "loss_type": loss_type})
        n_ce = sum(r["loss_type"] == CE for r in rows)
        n_ul = len(rows) - n_ce
        if n_ce == 0:
            raise DataError(f"the promote set has no row that fits train.max_seq_len={cfg.train.max_seq_len} "
                            f"({self.find('promote')}); widen method.promote's PPL range, raise promote.size or "
                            "train.max_seq_len.")
        if self.uses_suppress and n_ul == 0:
            raise DataError(f"the suppress set has no usable row ({self.find('suppress')}): no incorrect sample "
                            "passed the filter. Lower method.suppress.min_ppl, draw more samples "
                            "(method.suppress.num_generations), or set method.ul_per_global_batch=0 (promote only).")
        metrics: dict[str, Any] = {"train/promote_rows": n_ce, "train/suppress_rows": n_ul,
                                   "train/dropped_rows": dropped, "train/rows": len(rows)}
        from runner import checkpoint

        resume = bool(cfg.resume and checkpoint.latest(self.run_dir / "checkpoints"))
        model, train_metrics = self.train_model(
            model, tokenizer, rows, trainer_cls=OxaTrainer, resume=resume, loss_types=[r["loss_type"] for r in rows],
            ul_weight=float(m.ul_weight), ul_per_batch=int(m.ul_per_global_batch),
            global_batch_size=global_batch_size(cfg), sampler_seed=int(cfg.seed))
        metrics.update(train_metrics)
        history = self.last_trainer.state.log_history
        for key in ("ce_loss", "ul_loss"):
            values = [h[key] for h in history if key in h]
            if values:
                metrics[f"train/{key}"] = values[-1]
        metrics["train/world_size"] = world_size(cfg)
        return model, metrics
