"""Answer extraction and matching on hand-written outputs."""

from __future__ import annotations

import pytest

from runner.metrics import accuracy_by_language, extract_answer, last_boxed, numeric_match


@pytest.mark.parametrize("text,expected", [
    ("5 + 6 = 11. The answer is 11.", "11"),
    ("The answer is 1,234.", "1234"),
    ("She has -3 degrees. The answer is -3", "-3"),
    ("It costs $2.50 in total.", "2.5"),
    ("so 8.0 apples", "8"),
    ("First 12, then 15, finally 18", "18"),
    ("The answer is 7. Check: 3 + 4 = 7 and 9 more", "7"),
    ("\\boxed{42}", "42"),
    ("we get \\boxed{\\frac{1}{2}} at the end", "\\frac{1}{2}"),
    ("x = \\boxed{1,000} and later 5", "1000"),
    ("Die Antwort lautet 29.", "29"),
    ("41 + 33 = 74. 答案是 74。", "74"),
    ("答えは 12 です。", "12"),
    ("उत्तर nothing here", None),
    ("", None),
    ("answer: +5", "5"),
    ("The answer is .5", "0.5"),
    ("Total 3,5 and 100,000 books", "100000"),
    ("\\boxed{x^{2}+1}", "x^{2}+1"),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_last_boxed_nested():
    assert last_boxed("a \\boxed{1} b \\boxed{\\sqrt{2}}") == "\\sqrt{2}"
    assert last_boxed("\\boxed{unclosed") is None


@pytest.mark.parametrize("pred,gold,ok", [
    ("18", "18", True), ("18.0", "18", True), ("1234", "1,234", True), ("17", "18", False), (None, "1", False),
    ("0.5", "0.50", True), ("\\frac{1}{2}", "\\frac{1}{2}", True), ("-3", "3", False),
])
def test_numeric_match(pred, gold, ok):
    assert numeric_match(pred, gold) is ok


def test_accuracy_by_language_is_the_mean_over_languages():
    records = [{"lang": "de", "correct": True}, {"lang": "de", "correct": False}, {"lang": "zh", "correct": True}]
    out = accuracy_by_language(records)
    assert out == {"eval/accuracy/de": 0.5, "eval/accuracy/zh": 1.0, "eval/accuracy": 0.75}
