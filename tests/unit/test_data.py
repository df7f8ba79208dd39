"""Data loaders on the real copies in ../shared/data, the built-in generator, and bad-input errors."""

from __future__ import annotations

import json

import pytest

from runner import arith
from runner.data import gsm8k_final_answer, load_split, read_jsonl, render
from runner.errors import DataError
from tests.conftest import shared


def test_arith_is_seeded_disjoint_and_exact(compose_cfg):
    cfg = compose_cfg().data
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert len({e.lang for e in train}) == 11 and len(train) == 11 * 256 and len(test) == 11 * 16
    assert load_split(cfg, "train") == train  # same seed, same rows
    other = load_split(compose_cfg("data.seed=1").data, "train")
    assert [e.question for e in other] != [e.question for e in train]
    key = lambda e: (e.lang, e.meta["op"], e.meta["a"], e.meta["b"])  # noqa: E731
    assert not {key(e) for e in train} & {key(e) for e in test}
    for ex in train + test:
        a, b = ex.meta["a"], ex.meta["b"]
        assert int(ex.answer) == {"add": a + b, "sub": a - b, "mul": a * b}[ex.meta["op"]]
        assert ex.solution.startswith(f"{a} ") and ex.answer in ex.solution.split("=")[-1]


def test_arith_languages_have_their_own_script():
    de, zh, th = (arith.generate("test", [x], eval_size=1)[0].question for x in ("de", "zh", "th"))
    assert "Äpfel" in de and "苹果" in zh and "แอปเปิล" in th


def test_mgsm_from_local_files(compose_cfg):
    cfg = compose_cfg("data=mgsm", f"data.path={shared('mgsm')}").data
    test = load_split(cfg, "test")
    assert len(test) == 11 * 250
    de = [e for e in test if e.lang == "de"]
    assert de[0].answer == "18" and de[0].question.startswith("Janets Enten")
    train = load_split(cfg, "train")
    assert len(train) == 11 * 8 and train[0].answer == "11" and not train[0].question.startswith("প্রশ্ন")


def test_mgsm_commas_are_stripped(compose_cfg):
    cfg = compose_cfg("data=mgsm", f"data.path={shared('mgsm')}", "data.languages=[en]").data
    answers = [e.answer for e in load_split(cfg, "test")]
    assert all("," not in a for a in answers) and answers[146] == "2125"


def test_language_selection_and_limits(compose_cfg):
    cfg = compose_cfg("data=mgsm", f"data.path={shared('mgsm')}", "data.languages=[de,zh]").data
    rows = load_split(cfg, "test", max_per_lang=3)
    assert [e.lang for e in rows] == ["de"] * 3 + ["zh"] * 3
    rows = load_split(cfg, "test", max_total=5)
    assert [e.lang for e in rows] == ["de", "zh", "de", "zh", "de"]
    with pytest.raises(DataError, match="'data.languages' has \\['xx'\\].*valid languages: bn, de"):
        load_split(compose_cfg("data=mgsm", f"data.path={shared('mgsm')}", "data.languages=[xx]").data, "test")


def test_msvamp(compose_cfg):
    cfg = compose_cfg("data=msvamp", f"data.path={shared('msvamp')}", "data.languages=[de,sw]").data
    rows = load_split(cfg, "test")
    assert len(rows) == 2000 and rows[0].answer == "8" and rows[0].question.startswith("Julia spielte")
    with pytest.raises(DataError, match="only a 'test' split"):
        load_split(cfg, "train")


def test_gsm8k(compose_cfg):
    cfg = compose_cfg("data=gsm8k", f"data.path={shared('gsm8k')}").data
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert (len(train), len(test)) == (7473, 1319)
    assert train[0].answer == "72" and "<<" not in train[0].solution
    assert train[0].solution.endswith("The answer is 72.")
    prompt, completion = render(train[0], cfg)
    assert prompt.startswith("Question: Natalia") and prompt.endswith("\nAnswer:") and completion.startswith(" ")
    assert gsm8k_final_answer("x\n#### 1,000") == "1000" and gsm8k_final_answer("no marker") == ""


def test_hub_path_maps_fields(compose_cfg, monkeypatch):
    import datasets

    def fake_load(hub_id, name, split):
        assert (hub_id, name, split) == ("openai/gsm8k", "main", "test")
        return datasets.Dataset.from_list([{"question": "1+1?", "answer": "1+1=<<1+1=2>>2\n#### 2"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    rows = load_split(compose_cfg("data=gsm8k").data, "test")
    assert rows[0].answer == "2" and rows[0].solution == "1+1=2\nThe answer is 2."


@pytest.mark.parametrize("content,match", [
    (b"", "is empty"),
    (b'{"question": "q", "answer": "#### 1"}\n{bad json\n', "line 2 is not valid JSON"),
    (b'{"question": "q"}\n', "row 1 has no field 'answer'"),
    (b'{"question": 5, "answer": "#### 1"}\n', "field 'question' is an int"),
    (b'{"question": "q\xff", "answer": "#### 1"}\n', "not valid UTF-8 \\(line 1"),
    (b'{"question": "q", "answer": "no marker"}\n', "no '#### <answer>' line"),
])
def test_bad_files_name_the_file_and_row(compose_cfg, tmp_path, content, match):
    (tmp_path / "test.jsonl").write_bytes(content)
    with pytest.raises(DataError, match=match):
        load_split(compose_cfg("data=gsm8k", f"data.path={tmp_path}").data, "test")


def test_missing_path(compose_cfg, tmp_path):
    with pytest.raises(DataError, match="'data.path' is .*does not exist"):
        load_split(compose_cfg("data=gsm8k", f"data.path={tmp_path / 'nope'}").data, "test")


def test_read_jsonl_skips_blank_lines(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"a": 1}) + "\n\n" + json.dumps({"a": 2}) + "\n")
    assert read_jsonl(tmp_path / "a.jsonl") == [{"a": 1}, {"a": 2}]


def test_round_robin_takes_one_per_group_in_turn():
    from runner.data import round_robin

    groups = [["a1", "a2", "a3"], ["b1"], [], ["c1", "c2"]]
    assert round_robin(groups, 5) == ["a1", "b1", "c1", "a2", "c2"]
    assert round_robin(groups, 3) == ["a1", "b1", "c1"]
    assert round_robin(groups, 99) == ["a1", "b1", "c1", "a2", "c2", "a3"]  # groups used up before the limit
    assert round_robin(groups, 0) == []
