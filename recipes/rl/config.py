"""Config schema of the RL family's GRPO method and the long-CoT study's variants (pure dataclasses: no torch import).

Registered in Hydra's ConfigStore as ``schema/method/grpo`` via :mod:`runner.registry`; :meth:`GRPOMethodConfig.check`
runs before any model or data is loaded.

Batch arithmetic: ``train.micro_batch_size`` counts *completions* per forward pass (TRL's
``per_device_train_batch_size``); one optimizer step consumes ``train.micro_batch_size x train.grad_accum_steps x world
size`` completions, i.e. that number divided by ``method.num_generations`` prompts. The study's 64 prompts x 8
rollouts is a global batch of 512 completions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig

from runner.config import MethodConfig, global_batch_size, world_size

SAMPLE_MODES = ("all", "positive", "negative")


@dataclass
class LengthRewardConfig:
    """Relative length reward (RLR) of the long-CoT study (Mu et al. 2025, ``reward_manager/deepscaler.py``).

    In a group whose share of correct rollouts is at least ``tau``, each correct rollout ``i`` gets
    ``clip((mean_{correct j} L_j - L_i) / l_base, lower, upper)`` added to its reward before group normalisation.
    Defaults are the code's config defaults; the paper's RLR_8k run uses tau 0.75, l_base 500, lower -0.5, upper 1.
    """

    enabled: bool = False
    """Add the bonus."""
    tau: float = 0.5
    """Minimum share of correct rollouts in a group for its correct rollouts to get a bonus."""
    l_base: float = 1000.0
    """Length scale of the bonus, in tokens."""
    lower: float = -0.5
    """Lower clip bound of the bonus."""
    upper: float = 0.5
    """Upper clip bound of the bonus."""


@dataclass
class OfflineInjectionConfig:
    """Offline sample injection of the long-CoT study (``ray_trainer.py: _inject_offline_samples``).

    After rollout, every group whose share of correct rollouts is at most ``alpha`` gets up to ``min(#incorrect,
    #stored, max_inject)`` of its incorrect rollouts replaced by stored correct solutions of its prompt; rewards and
    advantages are then computed on the new group.
    """

    enabled: bool = False
    """Inject stored solutions."""
    path: Optional[str] = None
    """JSON Lines file of stored solutions: one row per prompt with ``id`` (the data row's id, e.g.
    ``gsm8k-train-12``) or ``question`` (its exact text), and ``solutions`` (a list of strings) or ``solution`` (one
    string). Several rows for one prompt add up."""
    alpha: float = 0.125
    """Groups with a correct share <= alpha get solutions injected (0.125: at most 2 of 16)."""
    max_inject: int = -1
    """At most this many injected solutions per group; -1 means no cap beyond #incorrect and #stored."""


@dataclass
class GRPOMethodConfig(MethodConfig):
    """GRPO (Shao et al. 2024) as run in the long-CoT study (Mu et al. 2025, verl 0.3 fork), with its variants.

    See ``recipes/rl/grpo.py`` for what is computed where and how it maps onto TRL's ``GRPOTrainer``.
    """

    num_generations: int = 4
    """Rollouts sampled per prompt (the group size G; the study: 8, with 16 for offline injection). The default 4 fits
    the default ``train.micro_batch_size=4``: one prompt per step."""
    max_completion_length: int = 256
    """Maximum response length in tokens (the study: 8k, 16k or 24k)."""
    temperature: float = 0.6
    """Sampling temperature of the rollouts (the study: 0.6)."""
    top_p: float = 1.0
    """Nucleus threshold of the rollouts."""
    beta: float = 0.001
    """Coefficient of the k3 KL penalty to the reference model, added per token to the loss (0 disables it and loads
    no reference model; the study: 0.001, 0 for RLR and injection runs)."""
    epsilon: float = 0.2
    """PPO clip range: the ratio is clipped to [1 - epsilon, 1 + epsilon_high]."""
    epsilon_high: Optional[float] = None
    """Upper clip range (null: same as epsilon, the symmetric clip of the study)."""
    advantage_eps: float = 1e-6
    """Added to the group's unbiased standard deviation before dividing (verl: 1e-6; TRL's own is 1e-4)."""
    num_iterations: int = 1
    """Policy updates per generation batch (PPO epochs; the study: 1)."""
    rewards: list[str] = field(default_factory=lambda: ["math_correct"])
    """Reward functions by name (see ``recipes/rl/rewards.py: REWARDS``); their weighted sum is the reward."""
    reward_weights: Optional[list[float]] = None
    """One weight per reward (null: all 1)."""
    reward_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Keyword options per reward name, passed to that reward function, e.g.
    ``method.reward_options.gram.model_path=<GRAM stage-2 checkpoint dir>`` (the ``gram`` reward requires it)."""
    samples: str = "all"
    """Which rollouts train after advantages are computed on the full group: ``all``, ``positive`` (correct ones only)
    or ``negative`` (incorrect ones only). Dropped rollouts leave the token-mean denominator."""
    length_reward: LengthRewardConfig = field(default_factory=LengthRewardConfig)
    """The relative length reward."""
    offline_injection: OfflineInjectionConfig = field(default_factory=OfflineInjectionConfig)
    """Offline sample injection."""

    @classmethod
    def check(cls, cfg: DictConfig) -> list[str]:
        m = cfg.method
        problems = []
        if m.num_generations < 2:
            problems.append(f"'method.num_generations' is {m.num_generations}; GRPO needs at least 2 rollouts per "
                            "prompt to normalise rewards within a group.")
        elif global_batch_size(cfg) % m.num_generations:
            problems.append(
                f"the global batch of {global_batch_size(cfg)} completions (train.micro_batch_size="
                f"{cfg.train.micro_batch_size} x train.grad_accum_steps={cfg.train.grad_accum_steps} x world size "
                f"{world_size(cfg)}) is not a multiple of method.num_generations={m.num_generations}; each step must "
                f"hold whole groups, e.g. train.micro_batch_size={m.num_generations}.")
        if m.max_completion_length < 1:
            problems.append(f"'method.max_completion_length' is {m.max_completion_length}; it must be at least 1.")
        if m.temperature <= 0 or not 0 < m.top_p <= 1:
            problems.append(f"'method.temperature'={m.temperature} must be > 0 (rollouts are sampled) and "
                            f"'method.top_p'={m.top_p} in (0, 1].")
        if m.beta < 0:
            problems.append(f"'method.beta' is {m.beta}; it must be >= 0 (0 disables the KL penalty).")
        if m.epsilon <= 0 or (m.epsilon_high is not None and m.epsilon_high <= 0):
            problems.append(f"'method.epsilon'={m.epsilon} and 'method.epsilon_high'={m.epsilon_high} must be "
                            "positive.")
        if m.advantage_eps <= 0:
            problems.append(f"'method.advantage_eps' is {m.advantage_eps}; it must be positive.")
        if m.num_iterations < 1:
            problems.append(f"'method.num_iterations' is {m.num_iterations}; it must be at least 1.")
        if m.samples not in SAMPLE_MODES:
            problems.append(f"'method.samples' is '{m.samples}'; valid values: {', '.join(SAMPLE_MODES)}.")
        problems.extend(_check_rewards(m))
        lr = m.length_reward
        if lr.enabled:
            if not 0 <= lr.tau <= 1:
                problems.append(f"'method.length_reward.tau' is {lr.tau}; it is a share of correct rollouts in "
                                "[0, 1].")
            if lr.l_base <= 0:
                problems.append(f"'method.length_reward.l_base' is {lr.l_base}; it must be a positive token count.")
            if lr.lower > lr.upper:
                problems.append(f"'method.length_reward.lower'={lr.lower} is above 'method.length_reward.upper'="
                                f"{lr.upper}.")
        inj = m.offline_injection
        if inj.enabled:
            if not inj.path:
                problems.append("'method.offline_injection.enabled' is true but 'method.offline_injection.path' is "
                                "not set; give a JSON Lines file of stored solutions (rows with 'id' or 'question' "
                                "and 'solutions').")
            if not 0 <= inj.alpha < 1:
                problems.append(f"'method.offline_injection.alpha' is {inj.alpha}; it is a share of correct rollouts "
                                "in [0, 1).")
            if inj.max_inject == 0 or inj.max_inject < -1:
                problems.append(f"'method.offline_injection.max_inject' is {inj.max_inject}; give a positive cap or "
                                "-1 for none.")
            local = cfg.train.micro_batch_size * cfg.train.grad_accum_steps
            if m.num_generations >= 2 and local % m.num_generations:
                problems.append(f"offline injection works on whole groups per process: train.micro_batch_size x "
                                f"train.grad_accum_steps = {local} must be a multiple of method.num_generations="
                                f"{m.num_generations}.")
        return problems


def _check_rewards(m: DictConfig) -> list[str]:
    from recipes.rl.rewards import reward_names  # the registry of names; imports no torch

    problems = []
    valid = reward_names()
    if not m.rewards:
        problems.append(f"'method.rewards' is empty; name at least one reward, e.g. [math_correct]. Valid rewards: "
                        f"{', '.join(valid)}.")
    bad = [r for r in m.rewards if r not in valid]
    if bad:
        problems.append(f"'method.rewards' has {bad}, which the reward registry does not know; valid rewards: "
                        f"{', '.join(valid)}.")
    unknown = [r for r in m.reward_options if r not in m.rewards]
    if unknown:
        problems.append(f"'method.reward_options' has options for {unknown}, which method.rewards={list(m.rewards)} "
                        "does not use.")
    if "gram" in m.rewards and not (m.reward_options.get("gram") or {}).get("model_path"):
        problems.append("'method.rewards' uses 'gram' but 'method.reward_options.gram.model_path' is not set; point "
                        "it at a trained GRAM checkpoint (a method=gram run's checkpoints/stage2/step-N).")
    if m.reward_weights is not None and len(m.reward_weights) != len(m.rewards):
        problems.append(f"'method.reward_weights' has {len(m.reward_weights)} weight(s) for {len(m.rewards)} "
                        f"reward(s) {list(m.rewards)}; give one weight per reward or null.")
    return problems
