"""Pass@k on hand-counted cases, math-verify answer matching, and the math benchmark loaders on the real files."""

from __future__ import annotations

import math

import pytest

from runner.data import load_split
from runner.errors import DataError
from runner.metrics import (
    math_verify_match,
    parse_gold,
    pass_at_k,
    pass_at_k_any,
    pass_at_k_by_language,
    score_answer,
)
from tests.conftest import shared


@pytest.mark.parametrize("n,c,k,expected", [
    (4, 1, 1, 0.25),            # c / n
    (4, 1, 2, 1 - 3 / 6),       # 1 - C(3,2)/C(4,2)
    (4, 2, 2, 1 - 1 / 6),       # 1 - C(2,2)/C(4,2)
    (4, 1, 4, 1.0),             # any correct among all n
    (4, 0, 4, 0.0),
    (5, 1, 2, 1 - 6 / 10),      # 1 - C(4,2)/C(5,2)
    (5, 4, 2, 1.0),             # n - c < k: every pair of samples holds a correct one
    (128, 1, 64, 0.5),          # C(127,64)/C(128,64) = (128-64)/128: no overflow at large n
    (10, 3, 3, 1 - 35 / 120),   # 1 - C(7,3)/C(10,3)
])
def test_unbiased_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("correct,k,expected", [
    ([True, False, False, False], 1, 0.25),
    ([True, False, False, False], 2, 0.5),    # groups [T,F] [F,F]
    ([True, True, False, False], 2, 0.5),     # groups [T,T] [F,F]; the unbiased value is 5/6
    ([False, True, False, True], 2, 1.0),
    ([True, False, False, False], 4, 1.0),    # OXA's Pass@k: any of the n
    ([False, False, False, False, True], 2, 0.0),  # the 5th sample is left over
])
def test_any_correct_hand_values(correct, k, expected):
    assert pass_at_k_any(correct, k) == expected


def test_estimators_agree_at_k_equal_n_and_k_equal_one():
    for correct in ([True, False, False, False], [False] * 4, [True, True, False, True]):
        n, c = len(correct), sum(correct)
        assert pass_at_k(n, c, n) == pass_at_k_any(correct, n)
        assert pass_at_k(n, c, 1) == pytest.approx(pass_at_k_any(correct, 1))


def test_bad_k_is_an_error():
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k_any([True], 2)


def test_pass_at_k_by_language_uses_sample_order_and_averages_languages():
    rows = []
    # en: problem 1 correct at samples 0 and 1; problem 2 never. de: problem 3 correct at sample 3 only.
    for pid, lang, correct in (("p1", "en", [True, True, False, False]), ("p2", "en", [False] * 4),
                               ("p3", "de", [False, False, False, True])):
        for k, ok in reversed(list(enumerate(correct))):  # written out of order: the index decides
            rows.append({"id": pid, "lang": lang, "sample": k, "correct": ok})
    out = pass_at_k_by_language(rows, [1, 2, 4])
    assert out["eval/pass@1/en"] == pytest.approx((0.5 + 0.0) / 2)
    assert out["eval/pass@2/en"] == pytest.approx((5 / 6 + 0.0) / 2)
    assert out["eval/pass@2_any/en"] == pytest.approx((0.5 + 0.0) / 2)   # p1's groups [T,T] [F,F]
    assert out["eval/pass@2_any/de"] == pytest.approx(0.5)               # p3's groups [F,F] [F,T]
    assert out["eval/pass@4/de"] == out["eval/pass@4_any/de"] == 1.0
    assert out["eval/pass@2"] == pytest.approx((out["eval/pass@2/en"] + out["eval/pass@2/de"]) / 2)
    assert out["eval/pass@4_any"] == pytest.approx((0.5 + 1.0) / 2)


@pytest.mark.parametrize("output,gold,ok", [
    ("so the answer is \\boxed{\\frac{1}{2}}", "0.5", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{(3, \\pi/2)}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{27}", "27", True),
    ("\\boxed{1+x^2}", "x^2+1", True),
    ("\\boxed{32348}", "\\$32,\\!348", True),        # MATH-500's escaped dollar
    ("\\boxed{\\frac{\\sqrt3}{2}}", "\\frac{\\sqrt{3}}{2}", True),
    ("\\boxed{3}", "4", False),
    ("no answer here at all", "4", False),
    ("", "4", False),
])
def test_math_verify_match(output, gold, ok):
    assert math_verify_match(output, gold)[1] is ok


def test_score_answer_picks_the_matcher_and_extracts_the_boxed_text():
    assert score_answer("\\boxed{\\frac{1}{2}}", "0.5", "math_verify") == ("\\frac{1}{2}", True)
    assert score_answer("\\boxed{\\frac{1}{2}}", "0.5", "numeric")[1] is False  # the numeric matcher compares text
    assert score_answer("The answer is 18.", "18", "numeric") == ("18", True)
    with pytest.raises(ValueError, match="numeric, math_verify"):
        score_answer("1", "1", "exact")


BENCHMARKS = {"math500": 500, "aime24": 30, "aime25": 30, "amc23": 40, "minerva_math": 272, "olympiadbench": 675}


@pytest.mark.parametrize("name,rows", sorted(BENCHMARKS.items()))
def test_math_benchmark_loads_and_its_golds_verify(name, rows, compose_cfg):
    cfg = compose_cfg(f"data={name}", f"data.path={shared(name)}")
    assert cfg.data.answer_match == "math_verify" and cfg.data.train_split is None
    examples = load_split(cfg.data, "test")
    assert len(examples) == rows
    for ex in examples[:40]:  # each gold parses, and a boxed copy of it verifies
        assert ex.question and ex.answer and parse_gold(ex.answer)
        assert math_verify_match(f"Thus \\boxed{{{ex.answer}}}.", ex.answer)[1], (name, ex.answer)


def test_math_field_mappings_on_real_rows(compose_cfg):
    def first(name):
        return load_split(compose_cfg(f"data={name}", f"data.path={shared(name)}").data, "test")[0]

    assert first("amc23").answer == "27"                      # float 27.0 in the file
    assert first("aime25").answer == "70"                     # int in the file, no solution field
    assert first("minerva_math").answer == "1.6"              # the last \boxed{} of the solution
    assert first("olympiadbench").answer == "2"               # final_answer ["2"]
    assert first("olympiadbench").question.startswith("Xenia and Sergey")
    assert first("math500").answer == "\\left( 3, \\frac{\\pi}{2} \\right)"


def test_math_loader_errors_name_the_row(tmp_path, compose_cfg):
    (tmp_path / "test.jsonl").write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "x?"}\n')
    cfg = compose_cfg("data=math500", f"data.path={tmp_path}")
    with pytest.raises(DataError, match=r"row 2 has no field 'answer'"):
        load_split(cfg.data, "test")
    (tmp_path / "test.jsonl").write_text('{"problem": "1+1?", "answer": []}\n')
    with pytest.raises(DataError, match="empty list"):
        load_split(cfg.data, "test")


def test_pass_at_k_is_nan_free_for_every_count():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                v = pass_at_k(n, c, k)
                assert 0.0 <= v <= 1.0 and not math.isnan(v)
                assert v == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))
