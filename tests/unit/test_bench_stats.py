"""The arithmetic of the benchmarks (bench/stats.py): medians, per-pair ratios and their spread, the A B schedule."""

from __future__ import annotations

import pytest

from bench import stats


def test_median_of_odd_and_even_counts():
    assert stats.median([3.0, 1.0, 2.0]) == 2.0
    assert stats.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    with pytest.raises(ValueError):
        stats.median([])


def test_pair_ratios_divide_each_a_by_the_b_measured_with_it():
    # pair medians would give 3.0 / 2.0 = 1.5; the per-pair ratios are 10/5, 3/2, 1/1
    r = stats.pair_ratios([10.0, 3.0, 1.0], [5.0, 2.0, 1.0])
    assert r["per_pair"] == [2.0, 1.5, 1.0]
    assert (r["median"], r["min"], r["max"]) == (1.5, 1.0, 2.0)
    assert stats.fmt_ratio(r) == "1.50x (1.00-2.00)"
    with pytest.raises(ValueError):
        stats.pair_ratios([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        stats.pair_ratios([1.0], [0.0])


def test_compare_summarises_both_sides():
    c = stats.compare([2.0, 4.0], [1.0, 2.0])
    assert c["runner"] == {"median": 3.0, "min": 2.0, "max": 4.0, "n": 2, "values": [2.0, 4.0]}
    assert c["reference"]["median"] == 1.5 and c["ratio"]["per_pair"] == [2.0, 2.0]


def test_alternate_runs_warmup_then_rounds_in_order_and_drops_warmup():
    calls = []
    res = stats.alternate({"a": lambda i: calls.append(("a", i)) or i, "b": lambda i: calls.append(("b", i)) or -i},
                          repeats=2, warmup=1)
    assert calls == [("a", -1), ("b", -1), ("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    assert res == {"a": [0, 1], "b": [0, -1]}
    with pytest.raises(ValueError):
        stats.alternate({"a": lambda i: i}, repeats=0)


def test_megabatch_rows_follow_the_trainers_rule():
    from bench.throughput import megabatch_rows

    # min(rows // (4 x batch), 50) x batch, at least one batch
    assert megabatch_rows(16, 8) == 8  # 16 // 32 = 0 -> one batch: nothing grouped
    assert megabatch_rows(128, 8) == 32  # 128 // 32 = 4 batches
    assert megabatch_rows(7473, 8) == 400  # capped at 50 batches
