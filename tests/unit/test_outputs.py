"""The run dir: refusal to overwrite, atomic writes, provenance, secrets redacted; atomic checkpoints."""

from __future__ import annotations

import json

import pytest

from runner import checkpoint
from runner.errors import RunDirError
from runner.outputs import RunDir, redact


def test_a_new_run_refuses_a_dir_with_results(tmp_path):
    rd = RunDir(tmp_path, main=True)
    rd.check_fresh(resume=False)  # empty: fine
    rd.write_metrics({"train/loss": 1.5})
    with pytest.raises(RunDirError, match="already holds a run's results \\(metrics.json\\)"):
        rd.check_fresh(resume=False)
    rd.check_fresh(resume=True)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"train/loss": 1.5}


def test_metrics_merge_and_nan_is_written_as_text(tmp_path):
    rd = RunDir(tmp_path, main=True)
    rd.write_metrics({"a": 1.0})
    rd.write_metrics({"b": float("nan")})
    assert rd.read_json("metrics.json") == {"a": 1.0, "b": "nan"}


def test_non_main_ranks_write_nothing(tmp_path):
    rd = RunDir(tmp_path / "x", main=False)
    rd.write_json("plan.json", {"a": 1})
    rd.append_jsonl("metrics.jsonl", [{"a": 1}])
    assert not (tmp_path / "x").exists()


def test_provenance_and_redaction(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_plantedsecret123")
    rd = RunDir(tmp_path, main=True)
    rd.write_provenance(argv=["run", "model.hub_id=hf_plantedsecret123"])
    text = (tmp_path / "provenance.json").read_text()
    assert "hf_plantedsecret123" not in text and "***" in text
    prov = json.loads(text)
    assert prov["packages"]["transformers"] and "platform" in prov["hardware"]
    assert redact({"a": ["x hf_plantedsecret123 y"]}) == {"a": ["x *** y"]}


def test_atomic_checkpoint_dir_keeps_previous_on_failure(tmp_path):
    with checkpoint.atomic_dir(checkpoint.step_dir(tmp_path, 1)) as d:
        (d / "w").write_text("one")
    with pytest.raises(RuntimeError):
        with checkpoint.atomic_dir(checkpoint.step_dir(tmp_path, 2)) as d:
            (d / "w").write_text("half")
            raise RuntimeError("killed")
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [1]
    assert checkpoint.latest(tmp_path).joinpath("w").read_text() == "one"
    for step in (2, 3, 4):
        with checkpoint.atomic_dir(checkpoint.step_dir(tmp_path, step)) as d:
            (d / "w").write_text(str(step))
    checkpoint.prune(tmp_path, keep_last_n=2)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [3, 4]


def test_run_dir_files_follow_the_umask_not_mkstemps_0600(tmp_path):
    import os
    import stat

    from runner.outputs import _FILE_MODE

    RunDir(tmp_path, main=True).write_json("plan.json", {"a": 1})
    mode = stat.S_IMODE(os.stat(tmp_path / "plan.json").st_mode)
    assert mode == _FILE_MODE and mode & 0o044  # group/other can read under the usual umask 022
