"""One tiny end-to-end run per probing method through the real ``run`` path (subprocess), and MRMBench on the real
MiniLM encoder with an HH-RLHF-derived task."""

from __future__ import annotations

import json
import random

import pytest
from safetensors import safe_open

from tests.conftest import run_cli, shared

pytestmark = pytest.mark.slow
HEADS = ["train.lr=5e-2", "train.epochs=40", "train.micro_batch_size=16", "train.adam_beta2=0.95",
         "train.weight_decay=0.1", "hardware.num_threads=1"]

KIND = ["Sure, here is a kind and careful reply.", "Happy to help, here are the steps.", "Of course, thank you."]
RUDE = ["No. Go away, you fool.", "Stop asking me stupid things!", "Whatever, I do not care at all."]


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def write_synthetic_mrmbench(root, n_train=60, n_test=40):
    """harmlessness: the label is the kind of reply (a token pattern); verbosity: labels shuffled (no signal).

    One training row of harmlessness is far longer than any max_seq_len used here: it must be dropped."""
    rng = random.Random(0)
    for dim in ("harmlessness", "verbosity"):
        for split, n in (("train", n_train), ("test", n_test)):
            rows = []
            for i in range(n):
                label = i % 2
                output = " " + rng.choice(KIND if label else RUDE)
                rows.append({"input": f"Question {i}: tell me about item {i % 7}.", "output": output,
                             "label": label if dim == "harmlessness" else rng.randint(0, 1)})
            if dim == "harmlessness" and split == "train":
                rows.append({"input": "Question: " + "very long " * 200, "output": " ok", "label": 1})
            path = root / "mrm_easy" / dim / f"{split}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rows))
    return root


def test_mrmbench_probes_a_frozen_tiny_llama(tmp_path):
    data = write_synthetic_mrmbench(tmp_path / "data")
    run_dir = tmp_path / "run"
    args = ["method=mrmbench", "data=mrmbench", f"data.path={data}", "data.subsets=[harmlessness,verbosity]",
            "train.max_seq_len=64", "method.d_tau=5.0",
            *HEADS, f"hydra.run.dir={run_dir}"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = _metrics(run_dir)
    assert m["eval/accuracy/harmlessness"] >= 0.95  # separable: the label is a token pattern
    assert 0.25 <= m["eval/accuracy/verbosity"] <= 0.75  # shuffled labels: chance
    assert m["eval/accuracy"] == pytest.approx((m["eval/accuracy/harmlessness"] + m["eval/accuracy/verbosity"]) / 2)
    assert m["train/dropped_rows"] == 1 and m["eval/dropped_rows"] == 0
    assert m["train/rows/harmlessness"] == 60 and m["eval/rows/verbosity"] == 40
    assert m["train/backbone_unchanged"] == 1 and m["train/features_cached"] == 0
    assert m["train/trainable_params"] == 2 * 128  # two bias-free (128 -> 1) probes on tiny-llama's hidden 128
    assert m["train/steps/harmlessness"] == 40 * 4  # ceil(60 / 16) steps per epoch
    assert 0.0 <= m["eval/itp/discard_rate"] <= 1.0
    with safe_open(str(run_dir / "probes.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == ["harmlessness.weight", "verbosity.weight"]
        assert tuple(f.get_tensor("harmlessness.weight").shape) == (1, 128)
    preds = [json.loads(x) for x in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 80 and {p["dimension"] for p in preds} == {"harmlessness", "verbosity"}
    itp = preds[0]["itp"]
    assert set(itp["distances"]) == {"harmlessness", "verbosity"} and len(itp["distances"]["verbosity"]) == 2
    assert itp["keep"] == (itp["min_distance"] <= 5.0) and itp["leans_on"] in itp["distances"]
    discarded = sum(not p["itp"]["keep"] for p in preds) / len(preds)
    assert discarded == pytest.approx(m["eval/itp/discard_rate"])
    assert (run_dir / "features" / "mrmbench.safetensors").exists()

    # resuming the run reuses the cached features (extracted once) and reproduces the probes
    proc = run_cli(*args, "resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m2 = _metrics(run_dir)
    assert m2["train/features_cached"] == 1
    assert m2["eval/accuracy/harmlessness"] == m["eval/accuracy/harmlessness"]


def write_synthetic_pairs(path, n_per_subset=30):
    """Two preference types with their own topics; the chosen reply is kind; margins are known."""
    rng = random.Random(0)
    topics = {"safety": "Is it dangerous to mix chemicals?", "helpful": "What should I cook tonight?"}
    with open(path, "w") as f:
        for subset, prompt in topics.items():
            for i in range(n_per_subset):
                k = rng.randint(1, 2)
                row = {"id": f"{subset}-{i}", "subset": subset, "prompt": f"{prompt} ({i})",
                       "chosen": " ".join(rng.sample(KIND, k)), "rejected": rng.choice(RUDE), "margin": float(k)}
                f.write(json.dumps(row) + "\n")
    return path


def test_lrhp_runs_both_downstream_stages(tmp_path):
    pairs = write_synthetic_pairs(tmp_path / "pairs.jsonl")
    run_dir = tmp_path / "run"
    proc = run_cli("method=lrhp", "data=pairs-jsonl", f"data.path={pairs}", "method.target_subset=safety",
                   "method.seed_size=4", "method.target_test_size=8", "method.select_size=12",
                   "method.margin_source=data", "method.rep_dim=32", "train.max_seq_len=160", *HEADS, "train.lr=2e-2",
                   f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = _metrics(run_dir)
    assert (m["train/seed_pairs"], m["eval/target_test_pairs"], m["train/pool_pairs"]) == (4, 8, 48)
    assert m["eval/pds/base_rate"] == pytest.approx(18 / 48)
    assert m["eval/pds/precision"] > m["eval/pds/base_rate"] + 0.3  # the topics separate the two types
    for key in ("rm_accuracy_selected", "rm_accuracy_random", "rm_accuracy_pool"):
        assert 0.0 <= m[f"eval/pds/{key}"] <= 1.0
    assert m["eval/pds/rm_accuracy_gain"] == pytest.approx(m["eval/pds/rm_accuracy_selected"]
                                                           - m["eval/pds/rm_accuracy_random"])
    assert m["eval/pmp/test_pairs"] == 12 and -1.0 <= m["eval/pmp/spearman"] <= 1.0
    assert m["train/encoder_loss"] < m["train/encoder_loss_first"]
    # trained on both orders: little position bias (the accuracy of pair texts on a random tiny model is not the
    # point here; tests/unit/test_lrhp.py checks accuracy and symmetry on controlled features)
    assert m["eval/lrhp/symmetry_gap"] < 0.3 and 0.0 <= m["eval/lrhp/pair_accuracy"] <= 1.0
    sel = [json.loads(x) for x in (run_dir / "pds_selection.jsonl").read_text().splitlines()]
    assert len(sel) == 48 and sum(r["selected"] for r in sel) == 12 and sum(r["random"] for r in sel) == 12
    pmp = [json.loads(x) for x in (run_dir / "pmp_predictions.jsonl").read_text().splitlines()]
    assert len(pmp) == 12 and {r["gold_margin"] for r in pmp} <= {1.0, 2.0}
    assert len((run_dir / "predictions.jsonl").read_text().splitlines()) == 8
    with safe_open(str(run_dir / "heads.safetensors"), framework="pt") as f:
        assert "encoder.head.weight" in f.keys() and "margin_head.net.0.weight" in f.keys()


def test_mrmbench_on_minilm_separates_helpful_from_harmless_conversations(tmp_path):
    """The real all-MiniLM-L6-v2 weights (pip package, offline), mean pooling, on an HH-RLHF-derived task."""
    proc = run_cli("experiment=mrmbench-hh-minilm", f"data.path={shared('hh_rlhf')}",
                   "data.subsets=[helpful_vs_harmless]", "data.train_size=50", "data.eval_size=40",
                   "train.max_seq_len=256", "hardware.num_threads=1", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = _metrics(tmp_path)
    assert m["train/total_params"] == 22_713_216 and m["train/backbone_unchanged"] == 1
    assert m["eval/rows/helpful_vs_harmless"] + m["eval/dropped_rows"] == 80
    assert m["eval/accuracy/helpful_vs_harmless"] >= 0.7  # chance is 0.5
