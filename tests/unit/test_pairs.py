"""Preference pairs from HH-RLHF (real test files in ../shared/data/hh_rlhf)."""

from __future__ import annotations

import pytest

from runner.errors import DataError
from runner.pairs import load_hh_rlhf, load_pairs_jsonl, split_hh
from tests.conftest import shared


def test_split_hh_by_hand():
    c = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: 2+2?\n\nAssistant: 4"
    r = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: 2+2?\n\nAssistant: five"
    assert split_hh(c, r) == ("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: 2+2?\n\nAssistant:", "4", "five")
    with pytest.raises(ValueError):
        split_hh("no turns", "x")
    # transcripts that diverge before the last turn keep the rest of each dialogue
    assert split_hh("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d", "\n\nHuman: a\n\nAssistant: x") == (
        "\n\nHuman: a\n\nAssistant:", "b\n\nHuman: c\n\nAssistant: d", "x")


def test_real_counts_and_ties_dropped():
    path = shared("hh_rlhf")
    assert len(load_hh_rlhf(path, ["harmless-base"], drop_ties=False)) == 2312
    helpful = load_hh_rlhf(path, ["helpful-base"])
    assert len(helpful) == 2354 - 2
    assert all(p.chosen != p.rejected and p.prompt.endswith("\n\nAssistant:") for p in helpful)
    assert helpful[0].prompt.startswith("\n\nHuman: Do you know why turkeys")
    two = load_hh_rlhf(path, ["helpful-base", "harmless-base"], max_per_subset=3)
    assert [p.subset for p in two] == ["helpful-base"] * 3 + ["harmless-base"] * 3


def test_errors(tmp_path):
    with pytest.raises(DataError, match="subsets \\['nope'\\] do not exist"):
        load_hh_rlhf(tmp_path, ["nope"])
    with pytest.raises(DataError, match="does not exist"):
        load_hh_rlhf(tmp_path, ["helpful-base"])
    (tmp_path / "p.jsonl").write_text('{"prompt": "q", "chosen": "a"}\n')
    with pytest.raises(DataError, match="row 1 needs a string field 'rejected'"):
        load_pairs_jsonl(tmp_path / "p.jsonl")
