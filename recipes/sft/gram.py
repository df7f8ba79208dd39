"""GRAM's mathematics: the stage-1 and stage-2 rows, the label-smoothed two-token loss, the two-order reward readout,
and the readout as a reward function for RL.

GRAM ("GRAM: A Generative Foundation Reward Model for Reward Generalization", Wang et al., ICML 2025, PMLR
267:62916-62936; code: github.com/NiuTrans/GRAM):

* **stage 1** (pre-training, no labels): plain SFT of ``[User Question]\\n{prompt}\\n\\n`` -> both responses in the
  A/B answer blocks, loss on the output span only (:func:`pretrain_row`);
* **stage 2** (fine-tuning): the judge prompt (:data:`recipes.sft.config.GRAM_JUDGE_TEMPLATE`) -> the single token
  ``A`` or ``B``; the loss takes the logits at the position that predicts the label token, keeps the two candidate
  logits and applies cross-entropy with label smoothing epsilon over those two classes (:func:`gram_loss`; the
  code's ``compute_loss_func`` in ``src/llamafactory/train/sft/trainer.py``). With z = l_y - l_other this is
  ``-log sigmoid(z) + (eps/2) z``: a Bradley-Terry ranking loss plus a margin penalty (METHODS.md §3);
* **readout** (``evaluation/gram_eval.py``): both orders are scored, a softmax over the two candidate logits at the
  last prompt position, and ``score_a = (p(A | a, b) + p(B | b, a)) / 2`` (:func:`readout`). ``gram_demo.py`` takes
  the softmax over the other dimension; this module follows ``gram_eval.py``.

The readout is also a TRL-style reward function (:class:`GramReward`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from recipes.sft.config import GRAM_JUDGE_TEMPLATE, GRAM_PRETRAIN_OUTPUT, GRAM_PRETRAIN_PROMPT
from runner.errors import ModelError

IGNORE_INDEX = -100
LABELS = ("A", "B")


# --------------------------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------------------------


def label_token_ids(tokenizer: Any) -> tuple[int, int]:
    """The token ids of ``A`` and ``B``; each must be a single token (GRAM asserts the same).

    Raises:
        ModelError: the tokenizer splits ``A`` or ``B`` into several tokens, or maps both to one id.
    """
    ids = [tokenizer(x, add_special_tokens=False)["input_ids"] for x in LABELS]
    if any(len(x) != 1 for x in ids) or ids[0] == ids[1]:
        raise ModelError(f"GRAM needs 'A' and 'B' to be single, distinct tokens; this tokenizer gives {ids}.")
    return ids[0][0], ids[1][0]


def pair_orders(n: int, mode: str, seed: int) -> list[list[bool]]:
    """For each of n pairs, the orders to lay it out in: ``True`` = (chosen as A, rejected as B).

    ``both``: ``[True, False]`` for every pair; ``random``: one seeded coin flip per pair.
    """
    if mode == "both":
        return [[True, False] for _ in range(n)]
    rnd = random.Random(seed)
    return [[rnd.random() < 0.5] for _ in range(n)]


def format_prompt(text: str, tokenizer: Any, use_chat_template: bool) -> str:
    """``text`` as a user turn of the chat template (with the assistant generation prompt), or as is."""
    from recipes.sft.data import prompt_text

    return prompt_text(text, tokenizer, use_chat_template)


def pretrain_row(prompt: str, response_a: str, response_b: str, tokenizer: Any, use_chat_template: bool,
                 prompt_template: str = GRAM_PRETRAIN_PROMPT,
                 output_template: str = GRAM_PRETRAIN_OUTPUT) -> dict[str, list[int]]:
    """A stage-1 row ``{"input_ids", "labels"}``: labels are -100 on the prompt and equal the ids on the output span
    (both responses and the EOS); no preference label is used."""
    from recipes.sft.data import encode_pair

    return encode_pair(prompt_template.format(prompt=prompt),
                       output_template.format(response_a=response_a, response_b=response_b), tokenizer,
                       use_chat_template)


def judge_prompt_ids(prompt: str, response_a: str, response_b: str, tokenizer: Any, use_chat_template: bool,
                     template: str = GRAM_JUDGE_TEMPLATE) -> list[int]:
    """Token ids of the stage-2 / readout prompt for the order (a, b)."""
    from recipes.sft.data import encode_prompt

    text = format_prompt(template.format(prompt=prompt, response_a=response_a, response_b=response_b), tokenizer,
                         use_chat_template)
    return encode_prompt(text, tokenizer, use_chat_template)


def judge_row(prompt_ids: list[int], label_id: int) -> dict[str, list[int]]:
    """A stage-2 row: the prompt followed by the label token, trained on the label token only."""
    return {"input_ids": list(prompt_ids) + [label_id], "labels": [IGNORE_INDEX] * len(prompt_ids) + [label_id]}


# --------------------------------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------------------------------


def label_positions(labels: torch.Tensor) -> torch.Tensor:
    """``[B]`` index of the position whose logits predict each row's first label token: (first index with
    ``labels != -100``) - 1. Works on right- and left-padded batches (padding carries label -100).

    Raises:
        ValueError: a row has no label, or its first label sits at index 0 (nothing predicts it).
    """
    has = labels != IGNORE_INDEX
    if not bool(has.any(1).all()):
        raise ValueError("a GRAM stage-2 row has no label token (every label is -100).")
    first = has.int().argmax(1)
    if bool((first == 0).any()):
        raise ValueError("a GRAM stage-2 row has its label at position 0; the label must follow a prompt.")
    return first - 1


def two_class_loss(candidate_logits: torch.Tensor, target: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Mean label-smoothed cross-entropy over two classes: ``candidate_logits [B, 2]``, ``target [B]`` in {0, 1}.

    Equal to ``-(1 - eps/2) log p_y - (eps/2) log p_other``; at logits [2, 0], target 0: 0.226928 for eps = 0.1 and
    0.126928 = -log sigmoid(2) for eps = 0.
    """
    return F.cross_entropy(candidate_logits.float(), target, label_smoothing=epsilon)


def gram_loss(logits: torch.Tensor, labels: torch.Tensor, candidate_ids: tuple[int, int],
              epsilon: float = 0.1) -> torch.Tensor:
    """GRAM's stage-2 loss of a batch.

    Args:
        logits: ``[B, T, V]`` causal-LM logits.
        labels: ``[B, T]`` with the label token (``A`` or ``B``) at its position, -100 elsewhere.
        candidate_ids: the token ids of ``A`` and ``B`` (:func:`label_token_ids`).
        epsilon: label smoothing.

    Raises:
        ValueError: a row's first label token is neither ``A`` nor ``B``, or a row has no label.
    """
    pos = label_positions(labels)
    rows = torch.arange(labels.size(0), device=labels.device)
    label = labels[rows, pos + 1]
    a_id, b_id = candidate_ids
    if not bool(((label == a_id) | (label == b_id)).all()):
        raise ValueError(f"a GRAM stage-2 row's label token is not A ({a_id}) or B ({b_id}): {label.tolist()}.")
    cand = logits[rows.to(logits.device), pos.to(logits.device)][:, [a_id, b_id]]
    return two_class_loss(cand, (label == b_id).long().to(logits.device), epsilon)


# --------------------------------------------------------------------------------------------------------------------
# Readout
# --------------------------------------------------------------------------------------------------------------------


def readout(logits_ab: torch.Tensor, logits_ba: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(score_a, score_b), each ``[N]``, from the (A, B) candidate logits ``[N, 2]`` of both orders.

    ``logits_ab``: prompt with a as A and b as B; ``logits_ba``: b as A and a as B. ``score_a = (p(A | a, b) +
    p(B | b, a)) / 2``, ``score_b = (p(B | a, b) + p(A | b, a)) / 2`` (``gram_eval.py``); they sum to 1, and swapping
    a and b swaps them.
    """
    p_ab = torch.softmax(logits_ab.float(), dim=-1)
    p_ba = torch.softmax(logits_ba.float(), dim=-1)
    return (p_ab[:, 0] + p_ba[:, 1]) / 2, (p_ab[:, 1] + p_ba[:, 0]) / 2


@torch.no_grad()
def candidate_logits(model: Any, prompts: Sequence[Sequence[int]], candidate_ids: tuple[int, int], pad_id: int,
                     batch_size: int = 8) -> torch.Tensor:
    """``[N, 2]`` logits of ``A`` and ``B`` at the last position of each prompt (left-padded batches)."""
    from runner.generate import left_pad

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = torch.empty((len(prompts), 2))
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            ids, mask = left_pad([prompts[i] for i in idx], pad_id)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, -1]
            out[idx] = logits[:, list(candidate_ids)].float().cpu()
    finally:
        model.train(was_training)
    return out


def gram_scores(model: Any, tokenizer: Any, prompts: Sequence[str], responses_a: Sequence[str],
                responses_b: Sequence[str], *, use_chat_template: bool = False, template: str = GRAM_JUDGE_TEMPLATE,
                batch_size: int = 8, max_len: int | None = None) -> list[tuple[float, float] | None]:
    """GRAM scores ``(score_a, score_b)`` of each (prompt, a, b), or None where a prompt is longer than ``max_len``.

    Args:
        model, tokenizer: a GRAM model (a causal LM after stage 2) and its tokenizer.
        prompts, responses_a, responses_b: equal-length lists of texts.
        use_chat_template: wrap the judge prompt as a user turn of the tokenizer's chat template.
        template: the judge prompt (fields ``{prompt}``, ``{response_a}``, ``{response_b}``).
        batch_size: prompts per forward pass.
        max_len: skip (None) comparisons whose judge prompt is longer than this many tokens.
    """
    ids_a, ids_b = label_token_ids(tokenizer)
    enc_ab = [judge_prompt_ids(p, a, b, tokenizer, use_chat_template, template)
              for p, a, b in zip(prompts, responses_a, responses_b)]
    enc_ba = [judge_prompt_ids(p, b, a, tokenizer, use_chat_template, template)
              for p, a, b in zip(prompts, responses_a, responses_b)]
    keep = [i for i in range(len(enc_ab)) if max_len is None or max(len(enc_ab[i]), len(enc_ba[i])) <= max_len]
    out: list[tuple[float, float] | None] = [None] * len(enc_ab)
    if not keep:
        return out
    logits = candidate_logits(model, [enc_ab[i] for i in keep] + [enc_ba[i] for i in keep], (ids_a, ids_b),
                              tokenizer.pad_token_id, batch_size)
    score_a, score_b = readout(logits[: len(keep)], logits[len(keep):])
    for j, i in enumerate(keep):
        out[i] = (float(score_a[j]), float(score_b[j]))
    return out


def pairwise_accuracy(scores: Sequence[tuple[float, float]]) -> float:
    """Share of pairs whose chosen response (a) scores above the rejected one (b); a tie counts one half."""
    if not scores:
        return 0.0
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in scores) / len(scores)


# --------------------------------------------------------------------------------------------------------------------
# Reward function for RL
# --------------------------------------------------------------------------------------------------------------------


def _text(x: Any) -> str:
    """A prompt or completion as text: a string, or a TRL conversational list of ``{"role", "content"}`` messages
    (one user message: its content; several: an HH-RLHF-style transcript; an assistant completion: its content)."""
    if isinstance(x, str):
        return x
    if isinstance(x, dict):
        return str(x.get("content", ""))
    msgs = list(x)
    if len(msgs) == 1:
        return _text(msgs[0])
    names = {"user": "Human", "assistant": "Assistant"}
    return "".join(f"\n\n{names.get(m.get('role'), m.get('role'))}: {m.get('content', '')}" for m in msgs)


class GramReward:
    """GRAM's readout as a reward function in TRL's GRPO convention: ``reward(prompts, completions, **kw) ->
    list[float]``, each in [0, 1].

    Two modes:

    * **reference** (``reference_key`` set): a completion's reward is its GRAM score against the reference response
      of its prompt, taken from the keyword argument ``reference_key`` (TRL passes dataset columns as keyword
      arguments); 0.5 means as good as the reference. The GRAM README scores PPO samples this way against a
      greedy-decoded reference (ReMax-style).
    * **group** (``reference_key=None``): a completion's reward is its mean GRAM score against the other completions
      of the same prompt in the call (GRPO's group of ``num_generations``), every pair read in both orders; a
      prompt with one completion gets ``default``. The rewards of a group of m sum to m / 2. [INF: a reference-free
      proposal in the spirit of the README's pairwise knockout for best-of-n; pluggable.]

    Usage (importable without a run)::

        reward = GramReward("<gram run dir>/checkpoints/stage2/step-N", reference_key="reference")
        reward(prompts=["What is 2+2?"], completions=["4"], reference=["5"])  # -> [0.73...]

    By name in the RL recipe's reward registry: :func:`gram_reward` (``method.reward_options.gram.model_path``).

    Args:
        model: a GRAM checkpoint dir (loaded with ``from_pretrained``, on the CPU) or a loaded causal LM (used on
            its own device).
        tokenizer: its tokenizer (loaded from ``model`` when it is a path and this is None).
        reference_key: the keyword argument holding the reference responses; None for group mode.
        use_chat_template: wrap the judge prompt in the chat template (as the model was trained).
        template: the judge prompt.
        batch_size: prompts per forward pass.
        max_len: comparisons longer than this many tokens are not scored (they count as ``default``).
        default: the reward of a comparison that was not scored.

    Raises (on call):
        ValueError: reference mode without ``reference_key`` among the keyword arguments, or unequal lengths.
    """

    __name__ = "gram"

    def __init__(self, model: Any, tokenizer: Any = None, *, reference_key: str | None = None,
                 use_chat_template: bool = False, template: str = GRAM_JUDGE_TEMPLATE, batch_size: int = 8,
                 max_len: int | None = None, default: float = 0.5):
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            path = str(model)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
        if tokenizer is None:
            raise ValueError("GramReward needs the tokenizer when given a loaded model.")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model, self.tokenizer = model, tokenizer
        self.reference_key = reference_key
        self.use_chat_template = use_chat_template
        self.template = template
        self.batch_size = batch_size
        self.max_len = max_len
        self.default = default
        label_token_ids(tokenizer)

    def _scores(self, prompts: list[str], a: list[str], b: list[str]) -> list[tuple[float, float] | None]:
        return gram_scores(self.model, self.tokenizer, prompts, a, b, use_chat_template=self.use_chat_template,
                           template=self.template, batch_size=self.batch_size, max_len=self.max_len)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"GramReward got {len(prompts)} prompts and {len(completions)} completions; they must be "
                             "equal in number.")
        texts_p, texts_c = [_text(p) for p in prompts], [_text(c) for c in completions]
        if self.reference_key is not None:
            if self.reference_key not in kwargs:
                raise ValueError(f"GramReward scores a completion against a reference response: pass the references "
                                 f"as '{self.reference_key}=' (a dataset column of that name), one per completion; "
                                 f"got keyword arguments {sorted(kwargs)}.")
            refs = [_text(r) for r in kwargs[self.reference_key]]
            if len(refs) != len(texts_c):
                raise ValueError(f"GramReward got {len(texts_c)} completions and {len(refs)} references; they must be "
                                 "equal in number.")
            return [s[0] if s is not None else self.default for s in self._scores(texts_p, texts_c, refs)]
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(texts_p):
            groups.setdefault(p, []).append(i)
        pairs = [(i, j) for idx in groups.values() for n, i in enumerate(idx) for j in idx[n + 1:]]
        totals, counts = [0.0] * len(texts_c), [0] * len(texts_c)
        if pairs:
            scores = self._scores([texts_p[i] for i, _ in pairs], [texts_c[i] for i, _ in pairs],
                                  [texts_c[j] for _, j in pairs])
            for (i, j), s in zip(pairs, scores):
                si, sj = s if s is not None else (self.default, self.default)
                totals[i] += si
                totals[j] += sj
                counts[i] += 1
                counts[j] += 1
        return [t / c if c else self.default for t, c in zip(totals, counts)]


_LOADED: dict[tuple[str, bool], GramReward] = {}


def gram_reward(prompts: Sequence[Any], completions: Sequence[Any], *, model_path: str | None = None,
                use_chat_template: bool = False, **kwargs: Any) -> list[float]:
    """:class:`GramReward` as a plain function for the RL recipe's reward registry (``method.rewards=[gram]`` with
    ``method.reward_options.gram.model_path=<dir>``; see ``recipes/rl/rewards.py``).

    Args:
        prompts, completions: as TRL passes them to a reward function.
        model_path: the GRAM checkpoint dir (a ``method=gram`` run's ``checkpoints/stage2/step-N``); loaded once and
            kept for later calls.
        use_chat_template: whether the GRAM model was trained with its chat template.
        **kwargs: dataset columns. With a ``reference`` column the reward is the score against it (reference mode),
            otherwise the mean score against the other completions of the same prompt (group mode).

    Raises:
        ValueError: ``model_path`` is not given.
    """
    if not model_path:
        raise ValueError("the 'gram' reward needs a trained GRAM model: set method.reward_options.gram.model_path to "
                         "its checkpoint dir (e.g. <gram run dir>/checkpoints/stage2/step-N).")
    key = (str(model_path), bool(use_chat_template))
    if key not in _LOADED:
        _LOADED[key] = GramReward(str(model_path), use_chat_template=bool(use_chat_template))
    reward = _LOADED[key]
    reward.reference_key = "reference" if "reference" in kwargs else None
    return reward(prompts, completions, **kwargs)
