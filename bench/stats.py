"""Medians, per-pair ratios and their spread, and the A B A B schedule every benchmark uses.

Machines are noisy (here: 2 cores shared with other work), so a benchmark never compares two medians taken minutes
apart. It alternates the two sides (A B A B ...) and divides each A by the B measured right after it: drift in the
machine's load moves both halves of a pair together, and the spread of the per-pair ratios shows how much noise is
left.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def median(values: Sequence[float]) -> float:
    """The median (mean of the two middle values for an even count).

    Raises:
        ValueError: ``values`` is empty.
    """
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("median of an empty sequence")
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def summary(values: Sequence[float]) -> dict[str, Any]:
    """``{"median", "min", "max", "n", "values"}`` of one side's measurements (seconds, bytes, tokens/s...)."""
    xs = [float(v) for v in values]
    return {"median": median(xs), "min": min(xs), "max": max(xs), "n": len(xs), "values": xs}


def pair_ratios(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Per-pair ratios ``a[i] / b[i]`` and their median, min and max.

    ``a[i]`` and ``b[i]`` were measured back to back (pair ``i`` of an A B A B schedule). A ratio above 1 means A
    measured more than B (for times: A was slower).

    Raises:
        ValueError: the sequences differ in length, are empty, or a ``b[i]`` is zero.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"pair_ratios needs two equally long non-empty sequences (got {len(a)} and {len(b)})")
    if any(float(y) == 0 for y in b):
        raise ValueError("pair_ratios: a reference measurement is zero")
    ratios = [float(x) / float(y) for x, y in zip(a, b)]
    return {"median": median(ratios), "min": min(ratios), "max": max(ratios), "per_pair": ratios}


def compare(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Both sides' summaries and their per-pair ratio: ``{"runner": ..., "reference": ..., "ratio": ...}``."""
    return {"runner": summary(a), "reference": summary(b), "ratio": pair_ratios(a, b)}


def alternate(sides: dict[str, Callable[[int], Any]], repeats: int, warmup: int = 1,
              log: Callable[[str], None] | None = None) -> dict[str, list[Any]]:
    """Run ``warmup`` unrecorded rounds, then ``repeats`` recorded rounds; each round runs every side once, in order.

    With two sides this is the A B A B schedule. ``sides[name](i)`` gets the round index (negative for warm-up
    rounds) and returns a measurement.

    Returns:
        ``{name: [measurement of round 0, round 1, ...]}``, ``repeats`` measurements per side.

    Raises:
        ValueError: no sides, ``repeats`` below 1 or ``warmup`` below 0.
    """
    if not sides or repeats < 1 or warmup < 0:
        raise ValueError(f"alternate needs sides, repeats >= 1 and warmup >= 0 (got {len(sides)}, {repeats}, "
                         f"{warmup})")
    out: dict[str, list[Any]] = {name: [] for name in sides}
    for i in range(-warmup, repeats):
        if log:
            log("warm-up" if i < 0 else f"round {i + 1}/{repeats}")
        for name, fn in sides.items():
            result = fn(i)
            if i >= 0:
                out[name].append(result)
    return out


def fmt_ratio(r: dict[str, Any], digits: int = 2) -> str:
    """``1.23x (1.10-1.31)``: the median ratio and the min-max spread of the per-pair ratios."""
    return f"{r['median']:.{digits}f}x ({r['min']:.{digits}f}-{r['max']:.{digits}f})"
