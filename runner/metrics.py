"""Metrics: math answer extraction and matching, and per-language accuracy.

Answer extraction (:func:`extract_answer`), in order of precedence:

1. the content of the last ``\\boxed{...}`` (nested braces handled);
2. the number right after the last "The answer is" (any case; also "answer:" and the answer phrases of the
   built-in languages, e.g. "Die Antwort lautet", "答案是");
3. the last number in the text.

Numbers may carry thousands commas (``1,234``), a sign (``-3``, ``+5``), decimals (``2.50``), a leading ``$`` or a
trailing period; they are normalised (commas stripped, ``8.0`` -> ``8``) before a numeric comparison
(:func:`numeric_match`).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping

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
