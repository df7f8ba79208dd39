"""Metrics: math answer extraction and matching, per-language accuracy, and Pass@k over sampled answers.

Answer extraction (:func:`extract_answer`), in order of precedence:

1. the content of the last ``\\boxed{...}`` (nested braces handled);
2. the number right after the last "The answer is" (any case; also "answer:" and the answer phrases of the
   built-in languages, e.g. "Die Antwort lautet", "答案是");
3. the last number in the text.

Numbers may carry thousands commas (``1,234``), a sign (``-3``, ``+5``), decimals (``2.50``), a leading ``$`` or a
trailing period; they are normalised (commas stripped, ``8.0`` -> ``8``) before a numeric comparison
(:func:`numeric_match`). Competition-math answers (LaTeX expressions, intervals, tuples) are compared with the
``math-verify`` library instead (:func:`math_verify_match`); :func:`score_answer` picks the matcher by name
(``data.answer_match``).

Pass@k (:func:`pass_at_k_by_language`) is reported two ways, under different keys:

* ``pass@k``: the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on Code", eq. 1),
  ``1 - C(n-c, k) / C(n, k)`` per problem with n samples of which c are correct, averaged over problems;
* ``pass@k_any``: the share of groups of k samples holding at least one correct answer, counted directly on the n
  samples split into ``n // k`` consecutive disjoint groups (leftover samples unused). At k = n it is OXA's Pass@k
  (any correct among all n samples); at k = 1 it is the mean accuracy over samples, OXA's Pass@1.
"""

from __future__ import annotations

import math
import re
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+"
NUMBER_RE = re.compile(_NUMBER)
_ANSWER_PHRASES = [
    r"the answer is", r"answer:", r"final answer is", r"die antwort lautet", r"die antwort ist", r"la réponse est",
    r"la respuesta es", r"ответ:", r"ответ", r"答案是", r"答えは", r"คำตอบคือ", r"jibu ni", r"উত্তর হল", r"సమాధానం",
]
_PHRASE_RE = re.compile("|".join(re.escape(p) for p in _ANSWER_PHRASES), re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` (or ``\fbox{...}``) in ``text``, nested braces included; None if absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1: j].strip()
    return None


def normalize_number(text: str) -> str | None:
    """``'$1,234.50.'`` -> ``'1234.5'``; ``'8.0'`` -> ``'8'``; None when ``text`` holds no number."""
    m = NUMBER_RE.search(text.replace("$", ""))
    if not m:
        return None
    s = m.group(0).replace(",", "").lstrip("+")
    try:
        value = float(s)
    except ValueError:
        return None
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def extract_answer(text: str) -> str | None:
    """The final answer in a model output (see the module docstring for the rules); None when there is none."""
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        num = normalize_number(boxed)
        if num is not None and NUMBER_RE.fullmatch(boxed.replace(",", "").replace("$", "").strip()):
            return num
        return boxed
    phrases = list(_PHRASE_RE.finditer(text))
    if phrases:
        tail = text[phrases[-1].end():]
        m = NUMBER_RE.search(tail.replace("$", ""))
        if m:
            return normalize_number(m.group(0))
    numbers = NUMBER_RE.findall(text.replace("$", ""))
    if numbers:
        return normalize_number(numbers[-1])
    return None


def numeric_match(pred: str | None, gold: str, rel_tol: float = 1e-6) -> bool:
    """True when ``pred`` and ``gold`` are the same number (relative tolerance ``rel_tol``), or equal strings."""
    if pred is None:
        return False
    p, g = normalize_number(pred), normalize_number(str(gold))
    if p is not None and g is not None and NUMBER_RE.fullmatch(str(pred).replace(",", "").strip() or "x"):
        return math.isclose(float(p), float(g), rel_tol=rel_tol, abs_tol=rel_tol)
    return str(pred).strip() == str(gold).strip()


def accuracy_by_language(records: Iterable[Mapping[str, object]], prefix: str = "eval") -> dict[str, float]:
    """``{prefix}/accuracy/<lang>`` per language and ``{prefix}/accuracy``, the unweighted mean over languages.

    Args:
        records: rows with ``lang`` and ``correct`` (bool).
        prefix: key prefix.
    """
    hits: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        hits[str(r["lang"])].append(bool(r["correct"]))
    if not hits:
        return {}
    out = {f"{prefix}/accuracy/{lang}": sum(v) / len(v) for lang, v in sorted(hits.items())}
    out[f"{prefix}/accuracy"] = sum(out.values()) / len(out)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Competition math: math-verify
# --------------------------------------------------------------------------------------------------------------------

ANSWER_MATCHERS = ("numeric", "math_verify")
"""Valid ``data.answer_match`` values: the numeric matcher of GSM8K/MGSM-style numbers, or ``math-verify``."""


def _timeout() -> int | None:
    # math-verify's timeouts use signal.alarm, which only works in the main thread (TRL may call rewards elsewhere)
    return 5 if threading.current_thread() is threading.main_thread() else None


def parse_gold(gold: str) -> list:
    """A gold answer parsed by ``math_verify.parse``, wrapped as ``\\boxed{gold}`` (unless it already holds a
    ``\\boxed``) so that bare LaTeX (``\\frac{1}{2}``, ``(1,2)``, ``\\$18.90``) and answers with inline ``$`` are all
    read as one math answer. Empty list when unparseable."""
    from math_verify import parse

    text = str(gold).strip()
    if "\\boxed" not in text:
        text = f"\\boxed{{{text}}}"
    return parse(text, parsing_timeout=_timeout())


def math_verify_match(output: str, gold: str | list) -> tuple[str | None, bool]:
    """(extracted answer, correct) of a model output against a gold answer, compared by ``math-verify``.

    The output is parsed with math-verify's default extraction (the last ``\\boxed{}`` first, then LaTeX and plain
    expressions); ``gold`` is a string or an already parsed gold (:func:`parse_gold`, to parse it once per problem).
    The extracted answer is the content of the last ``\\boxed{}`` when there is one, else math-verify's string form.
    """
    from math_verify import parse, verify

    gold_parsed = parse_gold(gold) if isinstance(gold, str) else gold
    pred = parse(output or "", parsing_timeout=_timeout()) if output else []
    boxed = last_boxed(output or "")
    extracted = boxed if boxed is not None else (str(pred[-1]) if pred else None)
    if not pred or not gold_parsed:
        return extracted, False
    return extracted, bool(verify(gold_parsed, pred, timeout_seconds=_timeout()))


def score_answer(output: str, gold: str | list, matcher: str = "numeric") -> tuple[str | None, bool]:
    """(extracted answer, correct) with the named matcher: ``numeric`` (:func:`extract_answer` +
    :func:`numeric_match`) or ``math_verify`` (:func:`math_verify_match`).

    Raises:
        ValueError: an unknown matcher name.
    """
    if matcher == "numeric":
        pred = extract_answer(output)
        return pred, numeric_match(pred, str(gold))
    if matcher == "math_verify":
        return math_verify_match(output, gold)
    raise ValueError(f"unknown answer matcher '{matcher}'; valid: {', '.join(ANSWER_MATCHERS)}")


# --------------------------------------------------------------------------------------------------------------------
# Pass@k
# --------------------------------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem: ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021, eq. 1).

    Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``, the numerically stable product form of their reference code
    (no large binomials).

    Args:
        n: samples drawn for the problem.
        c: correct samples among them.
        k: the k of pass@k.

    Raises:
        ValueError: unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_any(correct: Sequence[bool], k: int) -> float:
    """Share of the ``len(correct) // k`` consecutive disjoint groups of k samples with at least one correct sample.

    At ``k = len(correct)`` this is OXA's Pass@k (1 if any of the n samples is correct, else 0); at k = 1, the mean
    accuracy over samples.

    Raises:
        ValueError: unless ``1 <= k <= len(correct)``.
    """
    n = len(correct)
    if not 1 <= k <= n:
        raise ValueError(f"pass@k_any needs 1 <= k <= n; got n={n}, k={k}")
    groups = n // k
    return sum(any(correct[g * k: (g + 1) * k]) for g in range(groups)) / groups


def pass_at_k_by_language(records: Iterable[Mapping[str, object]], ks: Sequence[int],
                          prefix: str = "eval") -> dict[str, float]:
    """Pass@k per language and averaged over languages, both estimators (see the module docstring).

    Args:
        records: one row per (problem, sample) with ``id``, ``lang``, ``sample`` (index) and ``correct`` (bool);
            rows with a ``repeat`` index (``eval.repeats``) are pooled, ordered by (repeat, sample).
        ks: the k values (each at most the number of samples per problem).
        prefix: key prefix.

    Returns:
        ``{prefix}/pass@{k}/<lang>``, ``{prefix}/pass@{k}`` (unweighted mean over languages), and the same with
        ``pass@{k}_any``.

    Raises:
        ValueError: a k larger than the samples of some problem.
    """
    samples: dict[str, dict[str, list[tuple[tuple[int, int], bool]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        order = (int(r.get("repeat", 0)), int(r.get("sample", 0)))
        samples[str(r["lang"])][str(r["id"])].append((order, bool(r["correct"])))
    out: dict[str, float] = {}
    for k in ks:
        per_lang: dict[str, tuple[float, float]] = {}
        for lang, problems in sorted(samples.items()):
            unbiased, anyk = [], []
            for rows in problems.values():
                correct = [ok for _, ok in sorted(rows)]
                unbiased.append(pass_at_k(len(correct), sum(correct), k))
                anyk.append(pass_at_k_any(correct, k))
            per_lang[lang] = (sum(unbiased) / len(unbiased), sum(anyk) / len(anyk))
        if not per_lang:
            continue
        for lang, (u, a) in per_lang.items():
            out[f"{prefix}/pass@{k}/{lang}"] = u
            out[f"{prefix}/pass@{k}_any/{lang}"] = a
        out[f"{prefix}/pass@{k}"] = sum(u for u, _ in per_lang.values()) / len(per_lang)
        out[f"{prefix}/pass@{k}_any"] = sum(a for _, a in per_lang.values()) / len(per_lang)
    return out
