"""Preference pairs from HH-RLHF (real test files in ../shared/data/hh_rlhf)."""

from __future__ import annotations

import pytest

from runner.errors import DataError
from runner.pairs import load_hh_rlhf, load_pair_split, load_pairs_jsonl, split_hh
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


def test_pair_split_from_a_data_config(compose_cfg, tmp_path):
    cfg = compose_cfg("data=hh_rlhf", f"data.path={shared('hh_rlhf')}")
    one = load_pair_split(cfg.data, "helpful-base/test", max_pairs=4)
    assert [p.id for p in one] == [f"helpful-base-test-{i}" for i in range(4)]
    mixed = load_pair_split(cfg.data, "test", max_pairs=6)  # round-robin over the four subsets
    assert [p.subset for p in mixed] == ["harmless-base", "helpful-base", "helpful-online",
                                         "helpful-rejection-sampled", "harmless-base", "helpful-base"]
    with pytest.raises(DataError, match="split 'dev' is not valid"):
        load_pair_split(cfg.data, "dev")
    (tmp_path / "test.jsonl").write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    own = compose_cfg("data=hh_rlhf", "data.format=pairs_jsonl", f"data.path={tmp_path}")
    assert load_pair_split(own.data, "test")[0].chosen == "a"
    with pytest.raises(DataError, match="holds no preference pairs"):
        load_pair_split(compose_cfg().data, "test")


def test_question_answer_loaders_point_pair_data_to_pair_methods(compose_cfg):
    from runner.data import load_split

    cfg = compose_cfg("data=hh_rlhf", f"data.path={shared('hh_rlhf')}")
    with pytest.raises(DataError, match="preference pairs, which only pair methods read"):
        load_split(cfg.data, "test")
