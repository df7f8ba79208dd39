"""GRPO as the long-CoT study runs it, on TRL's ``GRPOTrainer`` (trl 1.16.0), with the study's variants.

Source: Mu et al., "Dissecting Long-Chain-of-Thought Reasoning Models: An Empirical Study" (arXiv 2506.04913), code
github.com/takagi97/Dissect-Long-Reason-Models (verl 0.3.0.post1 fork). The mathematics lives in
:mod:`recipes.rl.variants` (pure functions); this module wires it into TRL.

Built on TRL, through its hooks, because TRL already does what the study's GRPO needs besides the advantage and
the variants: group sampling (``RepeatSampler``, ``num_generations``), rollouts with temperature / top-p and a
response budget, reference log-probs, the PPO-clip loss with the k3 KL term added per token, and
``loss_type="bnpo"``: ``sum(per_token_loss * mask) / mask.sum()`` over each micro-batch, i.e. verl's token mean.
The hooks overridden (names checked against trl 1.16.0's ``grpo_trainer.py``):

* ``_tokenize_prompts``: prompts are encoded as the SFT recipe and the evaluation encode them (BOS unless a chat
  template is applied), instead of TRL's ``tokenizer(text)``.
* ``_generate``: **offline injection** -- after rollout and before old/reference log-probs and rewards, replace
  incorrect rollouts of low-accuracy groups with stored correct solutions (tokenized as responses, EOS appended,
  skipped when longer than the budget); rewards are then computed on the new group ("rewards recomputed").
* ``_calculate_rewards``: after TRL's gathered ``[B*G, n_funcs]`` rewards, form the weighted sum, add the **relative
  length reward** (before normalisation), and record correctness and lengths.
* ``_generate_and_score_completions``: replace TRL's advantages by :func:`~recipes.rl.variants.group_advantages`
  (unbiased std, eps 1e-6: TRL's are ``std + 1e-4``), then apply **positive-only / negative-only** by zeroing the
  ``completion_mask`` rows of the removed rollouts. Under the token-mean loss this is exactly removing them: they
  leave both the sum and the denominator ``mask.sum()`` and give no gradient (``tests/recipes/test_rl.py`` checks loss
  and gradient against a physically smaller batch). Masking rather than slicing keeps TRL's fixed-size split of the
  generation batch into micro-batches; a step where no rollout is kept takes no optimizer step (the study skips it),
  by clearing the gradients so AdamW leaves the weights and its moments alone.
* ``training_step``: that skip, on top of :class:`runner.trainer.RunnerTrainer`'s NaN guard; checkpoints use the
  runner's ``checkpoints/step-N`` layout.

Per step, ``train/zero_adv_fraction``, ``train/reward_mean``, ``train/correct_fraction``,
``train/response_length_mean``, ``train/samples_kept``, ``train/samples_dropped`` and ``train/samples_injected``
(and ``train/length_bonus_mean`` with RLR) go to ``metrics.jsonl`` with TRL's own figures (``train/kl``,
``train/entropy``, ``train/clip_ratio/...``).

Differences from the study's code, kept on purpose:

* Positives and negatives are the verifier's binary correctness (``math_correct``), as ``corr_list`` in the study,
  whatever ``method.rewards`` sums into the reward.
* The study trims the kept count to a multiple of the world size by dropping a few more samples at random, and has
  a reserve ratio for the dropped class (0 in its scripts); neither is needed here (masked rows keep every rank's
  batch the same size), so the reserve ratio is 0.
* verl's ``low_var_kl`` clamps the k3 estimate to [-10, 10]; TRL's k3 term is not clamped.
* The LUFFY off-policy loss and the repetition penalty of the study's ``Luffy_loss.sh`` are not implemented: injected
  rollouts train with the ordinary clipped objective (the injection script's ``enable_luffy_loss=False`` setting).
* With DeepSpeed the no-rollout-kept skip cannot clear the engine's gradients: such a step is a zero-gradient step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from trl import GRPOTrainer

from recipes.rl.rewards import completion_text, is_math_correct
from recipes.rl.variants import (
    group_advantages,
    injection_slots,
    keep_mask,
    relative_length_bonus,
    zero_advantage_fraction,
)
from runner.trainer import RunnerTrainer

log = logging.getLogger("runner.rl")


@dataclass
class StudySettings:
    """The long-CoT study's knobs, as the trainer reads them (from ``method.*``)."""

    samples: str = "all"
    """``all``, ``positive`` or ``negative``."""
    advantage_eps: float = 1e-6
    """Added to the group std."""
    length_reward: bool = False
    """Add the relative length reward."""
    tau: float = 0.5
    l_base: float = 1000.0
    lower: float = -0.5
    upper: float = 0.5
    inject: bool = False
    """Inject stored solutions."""
    alpha: float = 0.125
    max_inject: int = -1
    add_special_tokens: bool = True
    """Encode prompts with the tokenizer's special tokens (False when a chat template already holds them)."""

    @classmethod
    def from_method(cls, m: Any) -> StudySettings:
        """Settings from the ``method`` config node."""
        return cls(samples=m.samples, advantage_eps=m.advantage_eps, length_reward=m.length_reward.enabled,
                   tau=m.length_reward.tau, l_base=m.length_reward.l_base, lower=m.length_reward.lower,
                   upper=m.length_reward.upper, inject=m.offline_injection.enabled, alpha=m.offline_injection.alpha,
                   max_inject=m.offline_injection.max_inject, add_special_tokens=not m.use_chat_template)


class StudyGRPOTrainer(RunnerTrainer, GRPOTrainer):
    """TRL ``GRPOTrainer`` with the study's advantages and variants (see the module docstring).

    Args:
        study: the variant settings.
        stored_solutions: for offline injection, ``{Example.id: [solution text, ...]}``.
        *args, **kwargs: as for ``GRPOTrainer`` (``args`` must be a ``GRPOConfig`` with ``loss_type="bnpo"``).
    """

    def __init__(self, *args: Any, study: StudySettings, stored_solutions: dict[str, list[str]] | None = None,
                 **kwargs: Any):
        self.study = study
        super().__init__(*args, **kwargs)
        if self.loss_type != "bnpo":
            raise ValueError(f"StudyGRPOTrainer needs loss_type='bnpo' (the study's token mean); got {self.loss_type}")
        self._batch_rows: list[dict[str, Any]] = []
        self._scored: dict[str, torch.Tensor] = {}
        self._injection: dict[str, int] = {}
        self._no_rows_kept = False
        self.correct_reward_index = (self.reward_func_names.index("math_correct")
                                     if "math_correct" in self.reward_func_names else None)
        self.stored: dict[str, list[tuple[str, list[int]]]] = {}
        self.stored_too_long = 0
        if study.inject:
            self._tokenize_stored(stored_solutions or {})

    def _tokenize_stored(self, solutions: dict[str, list[str]]) -> None:
        eos = self._tokenizer.eos_token_id
        for key, texts in solutions.items():
            kept = []
            for text in texts:
                ids = list(self._tokenizer(text, add_special_tokens=False)["input_ids"]) + [eos]
                if len(ids) > self.max_completion_length:
                    self.stored_too_long += 1  # a truncated solution would lose its answer: skipped, as the study
                    continue
                kept.append((text, ids))
            if kept:
                self.stored[key] = kept
        if self.stored_too_long:
            log.warning("offline injection: %d stored solutions are longer than method.max_completion_length=%d "
                        "tokens and are skipped", self.stored_too_long, self.max_completion_length)

    # ---- prompts -------------------------------------------------------------------------------------------------
    def _tokenize_prompts(self, prompts: list):
        ids = [list(self._tokenizer(p, add_special_tokens=self.study.add_special_tokens)["input_ids"])
               for p in prompts]
        return ids, None, {}

    # ---- rollouts and offline injection --------------------------------------------------------------------------
    def _generate(self, prompts: list):
        out = super()._generate(prompts)
        if not (self.model.training and self.study.inject):
            return out
        prompt_ids, completion_ids, tool_mask, completions, logprobs, extra, images, tool_images = out
        rows, G = self._batch_rows, self.num_generations
        correct = [is_math_correct(completion_text(c), r["answer"]) for c, r in zip(completions, rows)]
        completion_ids, completions = list(completion_ids), list(completions)
        injected = groups = 0
        for start in range(0, len(rows), G):
            ids = {r["id"] for r in rows[start:start + G]}
            if len(ids) != 1:
                raise RuntimeError(f"offline injection expects whole groups of {G} rollouts per process; rows "
                                   f"{start}..{start + G - 1} hold prompts {sorted(ids)}.")
            stored = self.stored.get(ids.pop(), [])
            slots = injection_slots(correct[start:start + G], len(stored), self.study.alpha, self.study.max_inject)
            for (text, token_ids), j in zip(stored, slots):
                completion_ids[start + j] = list(token_ids)
                old = completions[start + j]
                completions[start + j] = text if isinstance(old, str) else [{"role": "assistant", "content": text}]
                if logprobs is not None:  # sampling log-probs of an injected row do not exist
                    logprobs[start + j] = [float("nan")] * len(token_ids)
            injected += len(slots)
            groups += bool(slots)
        self._injection = {"samples_injected": injected, "groups_injected": groups,
                           "correct_before_injection": sum(correct)}
        return prompt_ids, completion_ids, tool_mask, completions, logprobs, extra, images, tool_images

    # ---- rewards: weighted sum + relative length reward ----------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # gathered [N, F]
        device = per_func.device
        if self.correct_reward_index is not None:
            correct = per_func[:, self.correct_reward_index] >= 0.5
        else:
            local = torch.tensor([is_math_correct(completion_text(c), x["answer"]) for c, x in
                                  zip(completions, inputs)], device=device)
            correct = self.accelerator.gather(local).bool()
        lengths = self.accelerator.gather(torch.tensor([len(ids) for ids in completion_ids_list], device=device))
        total = (per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
        bonus = None
        if self.study.length_reward:
            s = self.study
            bonus = relative_length_bonus(correct, lengths, self.num_generations, s.tau, s.l_base, s.lower, s.upper)
            total = total + bonus.to(device)
        self._scored = {"rewards": total, "correct": correct, "lengths": lengths}
        if bonus is not None:
            self._scored["bonus"] = bonus
        return per_func

    # ---- advantages and sample selection -------------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        self._batch_rows = inputs
        self._injection = {}
        out = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return out
        s, scored = self.study, self._scored
        advantages = group_advantages(scored["rewards"], self.num_generations, s.advantage_eps)
        keep = keep_mask(scored["correct"], s.samples).to(advantages.device)
        n = out["completion_ids"].size(0)
        local = slice(self.accelerator.process_index * n, (self.accelerator.process_index + 1) * n)
        out["advantages"] = advantages[local].to(out["advantages"].device, out["advantages"].dtype)
        mask = out["completion_mask"]
        out["completion_mask"] = mask * keep[local].to(mask.device, mask.dtype).unsqueeze(1)
        loss_mask = out["completion_mask"] * out["tool_mask"] if "tool_mask" in out else out["completion_mask"]
        out["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        self._no_rows_kept = not bool(keep.any())

        metrics = self._metrics["train"]
        metrics["zero_adv_fraction"].append(zero_advantage_fraction(advantages))
        metrics["reward_mean"].append(float(scored["rewards"].float().mean()))
        metrics["correct_fraction"].append(float(scored["correct"].float().mean()))
        metrics["response_length_mean"].append(float(scored["lengths"].float().mean()))
        metrics["samples_kept"].append(float(keep.sum()))
        metrics["samples_dropped"].append(float((~keep).sum()))
        if "bonus" in scored:
            metrics["length_bonus_mean"].append(float(scored["bonus"].mean()))
        if s.inject:
            totals = torch.tensor([self._injection.get(k, 0) for k in
                                   ("samples_injected", "groups_injected", "correct_before_injection")],
                                  device=advantages.device, dtype=torch.float32)
            totals = self.accelerator.reduce(totals, reduction="sum")
            metrics["samples_injected"].append(float(totals[0]))
            metrics["groups_injected"].append(float(totals[1]))
            metrics["correct_fraction_before_injection"].append(float(totals[2]) / max(len(scored["correct"]), 1))
        return out

    # ---- a step with no rollout kept takes no optimizer step -----------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._no_rows_kept:
            for p in model.parameters():
                p.grad = None
        return loss
