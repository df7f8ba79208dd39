"""The mathematics of GRPO as the long-CoT study runs it, and of its variants: small pure functions, no I/O.

Source: Mu et al., "Dissecting Long-Chain-of-Thought Reasoning Models: An Empirical Study" (arXiv 2506.04913), code
github.com/takagi97/Dissect-Long-Reason-Models (a verl 0.3.0.post1 fork):

* :func:`group_advantages` -- ``verl/trainer/ppo/core_algos.py: compute_grpo_outcome_advantage``;
* :func:`keep_mask` -- ``ray_trainer.py: _rm_neg_samples`` with reserve ratio 0 (``8k_pos.sh`` / ``8k_neg.sh``);
* :func:`relative_length_bonus` -- ``workers/reward_manager/deepscaler.py: relative_length_reward``;
* :func:`injection_slots` -- ``ray_trainer.py: _inject_offline_samples``.

Rollouts are laid out group by group: rows ``[g * G, (g + 1) * G)`` are the ``G`` rollouts of prompt ``g``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from runner.errors import ConfigError


def _groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    if x.dim() != 1 or group_size < 1 or x.numel() % group_size:
        raise ValueError(f"expected a flat tensor whose length is a multiple of the group size {group_size}; got "
                         f"shape {tuple(x.shape)}.")
    return x.view(-1, group_size)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's outcome advantages: ``A_i = (r_i - mean_g) / (std_g + eps)`` within each group.

    ``std_g`` is torch's *unbiased* standard deviation (``torch.std``, divisor ``G - 1``) and ``eps`` 1e-6, as in
    verl's ``compute_grpo_outcome_advantage`` (TRL uses 1e-4 and its own std). A group of size 1 gets mean 0 and std
    1, as in verl. Groups whose rewards are all equal get A = 0 exactly.

    Args:
        rewards: ``[N]`` float, one scalar reward per rollout, group by group (``N = num_groups x group_size``).
        group_size: G, the rollouts per prompt.
        eps: added to the standard deviation.

    Returns:
        ``[N]`` float32 advantages (one per rollout; the caller broadcasts them over the rollout's tokens).

    Raises:
        ValueError: ``rewards`` is not flat or its length is not a multiple of ``group_size``.
    """
    grouped = _groups(rewards.float(), group_size)
    if group_size == 1:  # verl: mean 0, std 1
        return grouped.flatten() / (1.0 + eps)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True)  # unbiased
    return ((grouped - mean) / (std + eps)).flatten()


def keep_mask(correct: torch.Tensor, samples: str) -> torch.Tensor:
    """Which rollouts stay in the batch under the study's positive-only / negative-only training.

    The study computes advantages on the *full* group first (so a negative keeps its usual A < 0), then removes the
    other class from the batch; removed rollouts leave the token-mean denominator.

    Args:
        correct: ``[N]`` bool, whether each rollout is correct (the binary verifier reward).
        samples: ``all`` (keep every rollout), ``positive`` (keep correct ones) or ``negative`` (keep incorrect ones).

    Returns:
        ``[N]`` bool mask of the rollouts that train.

    Raises:
        ConfigError: ``samples`` is not one of the three modes.
    """
    correct = correct.bool()
    if samples == "all":
        return torch.ones_like(correct)
    if samples == "positive":
        return correct.clone()
    if samples == "negative":
        return ~correct
    raise ConfigError(f"'method.samples' is '{samples}'; valid values: all, positive, negative.")


def relative_length_bonus(correct: torch.Tensor, lengths: torch.Tensor, group_size: int, tau: float, l_base: float,
                          lower: float, upper: float) -> torch.Tensor:
    """The relative length reward (RLR): a bonus for correct rollouts shorter than their group's correct mean.

    For each group ``g`` whose share of correct rollouts ``c_g >= tau``, every correct rollout ``i`` gets
    ``clip((mean_{j in g, correct} L_j - L_i) / l_base, lower, upper)``; incorrect rollouts and groups with
    ``c_g < tau`` get 0. The bonus is added to the reward *before* group normalisation, so all-correct groups gain
    non-zero advantages that favour shorter correct answers.

    Args:
        correct: ``[N]`` bool, whether each rollout is correct.
        lengths: ``[N]`` response lengths in tokens.
        group_size: G.
        tau: minimum correct share of a group.
        l_base: length scale in tokens.
        lower, upper: clip bounds of the bonus.

    Returns:
        ``[N]`` float32 bonuses.
    """
    ok = _groups(correct.bool(), group_size)
    length = _groups(lengths.float(), group_size)
    n_correct = ok.sum(dim=1, keepdim=True)
    share = n_correct.float() / group_size
    mean_correct = (length * ok).sum(dim=1, keepdim=True) / n_correct.clamp(min=1)
    bonus = ((mean_correct - length) / l_base).clamp(min=lower, max=upper)
    eligible = ok & (share >= tau)
    return torch.where(eligible, bonus, torch.zeros_like(bonus)).flatten()


def injection_slots(correct: Sequence[bool], num_stored: int, alpha: float, max_inject: int = -1) -> list[int]:
    """Which rollouts of one group offline injection replaces with stored correct solutions.

    A group whose correct share is ``<= alpha`` has its first ``min(#incorrect, num_stored, max_inject)`` incorrect
    rollouts (in rollout order) replaced, ``max_inject = -1`` meaning no cap; other groups are untouched.

    Args:
        correct: the group's rollouts, whether each is correct (length G).
        num_stored: usable stored correct solutions for this prompt.
        alpha: correct-share threshold (the study: 0.125, i.e. at most 2 of 16).
        max_inject: cap per group, or -1.

    Returns:
        Indices within the group to replace, in order; the k-th one receives the k-th stored solution.
    """
    if not correct:
        return []
    share = sum(bool(c) for c in correct) / len(correct)
    if share > alpha:
        return []
    wrong = [i for i, c in enumerate(correct) if not c]
    n = min(len(wrong), max(num_stored, 0), max_inject if max_inject > 0 else len(wrong))
    return wrong[:n]


def zero_advantage_fraction(advantages: torch.Tensor, atol: float = 1e-8) -> float:
    """Share of rollouts whose advantage is zero (|A| <= atol): all-correct and all-wrong groups, mostly."""
    if advantages.numel() == 0:
        return 0.0
    return float((advantages.abs() <= atol).float().mean())
