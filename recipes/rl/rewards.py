"""Reward functions of the RL recipe, pluggable by name (``method.rewards=[math_correct, answer_format]``).

Every reward has TRL's reward-function signature: ``f(prompts, completions, **kwargs) -> list[float]``, one float per
completion, where ``kwargs`` holds the dataset columns repeated per completion (here ``answer``, the gold final
answer, and ``id``) plus what ``GRPOTrainer._calculate_rewards`` adds (``completion_ids``, ``trainer_state``,
``log_extra``, ``log_metric``). Completions are strings, or one-message lists ``[{"role": "assistant", "content":
...}]`` for conversational data.

:data:`REWARDS` maps a name to the callable or to a lazy ``"module:attr"`` import string, so a reward whose code
needs heavy imports (a reward model such as GRAM's readout, ``recipes/sft/gram.py``) is imported only when a run asks
for it. Add one with :func:`register_reward`, or one line in :data:`REWARDS`. This module imports no torch.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable, Sequence
from typing import Any

from runner.errors import ConfigError

RewardFunc = Callable[..., list]


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the content of the last message of a conversational completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)


def is_math_correct(text: str, gold: str) -> bool:
    r"""Whether ``text`` states the gold final answer, by ``math-verify``.

    The prediction is the first match of math-verify's extraction with ``\boxed{}`` tried first, then LaTeX, then a
    plain expression after an answer anchor ("The answer is 18") or the last number. The gold answer is parsed the
    same way; an unparseable gold or prediction is not correct. Equivalent to the study's binary DeepScaleR
    ``is_correct`` reward (which reads the boxed answer with its own grader) on numeric answers.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    gold_parsed = parse(str(gold), extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()])
    if not gold_parsed or not text:
        return False
    pred = parse(text, extraction_config=[LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()],
                 extraction_mode="first_match")
    if not pred:
        return False
    try:
        return bool(verify(gold_parsed, pred))
    except Exception:  # math-verify raises on pathological expressions: count them as wrong, never crash training
        return False


def math_correct(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str] | None = None,
                 **kwargs: Any) -> list[float]:
    """1.0 when the completion's final answer equals the gold ``answer`` (by :func:`is_math_correct`), else 0.0.

    Raises:
        ConfigError: the dataset has no ``answer`` column (the RL recipe always passes the gold final answer).
    """
    if answer is None:
        raise ConfigError("reward 'math_correct' needs the gold final answer of each prompt (an 'answer' column); "
                          "use a math dataset whose rows have an answer (gsm8k, mgsm, arith).")
    return [float(is_math_correct(completion_text(c), g)) for c, g in zip(completions, answer)]


_FORMAT_RE = re.compile(r"\\boxed\{[^{}]*\S[^{}]*\}|[Tt]he (?:final )?answer is:?\s*\$?\s*[-+]?\d")


def answer_format(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
    r"""1.0 when the completion states a final answer in a form the graders read (``\boxed{...}`` with content, or
    "The answer is <number>"), else 0.0.

    [INF] The study has no format reward (its correctness reward is 0 for unparseable outputs); this optional shaping
    term is a proposal for small models that have not learnt the answer format yet.
    """
    return [float(bool(_FORMAT_RE.search(completion_text(c)))) for c in completions]


REWARDS: dict[str, RewardFunc | str] = {
    "math_correct": math_correct,
    "answer_format": answer_format,
    "gram": "recipes.sft.gram:gram_reward",
}
"""Reward name -> reward function, or a lazy ``"module:attr"`` string resolved on first use. ``gram`` is GRAM's
generative reward-model readout (``recipes/sft/gram.py``; options ``model_path``, ``use_chat_template`` through
``method.reward_options.gram``)."""


def register_reward(name: str, func: RewardFunc | str) -> None:
    """Make ``func`` (a reward function or a ``"module:attr"`` import string) available as ``method.rewards=[name]``.

    Raises:
        ValueError: ``name`` is already registered to something else.
    """
    if name in REWARDS and REWARDS[name] is not func:
        raise ValueError(f"reward '{name}' is already registered ({REWARDS[name]!r}).")
    REWARDS[name] = func


def reward_names() -> list[str]:
    """Registered reward names, sorted."""
    return sorted(REWARDS)


def get_reward(name: str, options: dict[str, Any] | None = None) -> RewardFunc:
    """The reward function registered as ``name`` (a lazy import string is imported now), with ``options`` bound as
    keyword arguments (``method.reward_options.<name>``).

    The returned callable carries ``__name__ == name`` (TRL names its logged metrics ``rewards/<name>/mean``).

    Raises:
        ConfigError: ``name`` is not registered, or its import string does not resolve to a callable.
    """
    if name not in REWARDS:
        raise ConfigError(f"'method.rewards' names '{name}', which the reward registry does not know; valid rewards: "
                          f"{', '.join(reward_names())}.")
    func = REWARDS[name]
    if isinstance(func, str):
        module, _, attr = func.partition(":")
        try:
            func = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as ex:
            raise ConfigError(f"reward '{name}' is registered as '{REWARDS[name]}', which cannot be imported ({ex}); "
                              f"valid rewards that import: {', '.join(n for n in reward_names() if n != name)}.") \
                from None
        if not callable(func):
            raise ConfigError(f"reward '{name}' ('{REWARDS[name]}') is not callable.")
    if options:
        func = functools.partial(func, **options)
    if getattr(func, "__name__", None) != name:
        inner = func

        def named(*args: Any, **kwargs: Any) -> list:
            return inner(*args, **kwargs)

        named.__name__ = name
        func = named
    return func
