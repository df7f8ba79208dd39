"""Resume bookkeeping without training: which checkpoint, which config changes are refused, how metrics.jsonl is cut
back; write failures; config checks that catch what Hydra lets through; secrets in logs."""

from __future__ import annotations

import json
import logging

import pytest

from runner import checkpoint
from runner.config import check_group_choices, compose, missing_keys
from runner.errors import ConfigError, RunDirError
from runner.logging import MetricsLogger
from runner.outputs import RunDir, SecretsFilter


def _run_dir_with(tmp_path, *overrides, steps=(2, 4)):
    run = tmp_path / "run"
    cfg = compose([f"run_dir={run}", *overrides])
    RunDir(run, main=True).write_config(cfg)
    for s in steps:
        (run / "checkpoints" / f"step-{s}").mkdir(parents=True)
    return run


def test_the_latest_complete_checkpoint_is_chosen_and_leftovers_ignored(tmp_path):
    run = _run_dir_with(tmp_path)
    (run / "checkpoints" / ".tmp-step-6-xyz").mkdir()
    (run / "checkpoints" / "step-10.partial").mkdir()  # not a step-N name
    point = checkpoint.find_resume_point(run, compose([f"run_dir={run}", "resume=true"]))
    assert (point.step, point.path.name, point.changes) == (4, "step-4", ())


def test_changes_outside_the_resume_keys_are_accepted(tmp_path):
    run = _run_dir_with(tmp_path)
    cfg = compose([f"run_dir={run}", "resume=true", "train.max_steps=50", "train.lr=1e-4", "eval.max_samples=3",
                   "train.save_steps=5", "logger=tensorboard"])
    assert checkpoint.find_resume_point(run, cfg).step == 4


@pytest.mark.parametrize("override,change", [
    ("model.architecture.num_hidden_layers=4", "model.architecture.num_hidden_layers: 8 -> 4"),
    ("data.languages=[de]", "data.languages: None -> ['de']"),
    ("method=slam", "method.name: 'sft' -> 'slam'"),
    ("seed=1", "seed: 0 -> 1"),
    ("train.grad_accum_steps=2", "train.grad_accum_steps: 1 -> 2"),
    ("train.batching=random", "train.batching: 'length_grouped' -> 'random'"),
])
def test_a_changed_model_data_method_or_data_order_is_refused_naming_it(tmp_path, override, change):
    run = _run_dir_with(tmp_path)
    with pytest.raises(ConfigError) as err:
        checkpoint.find_resume_point(run, compose([f"run_dir={run}", "resume=true", override]))
    assert change in str(err.value) and "resume_force=true" in str(err.value)
    forced = checkpoint.find_resume_point(run, compose([f"run_dir={run}", "resume=true", "resume_force=true",
                                                        override]))
    assert change in forced.changes and forced.step == 4


def test_no_checkpoint_or_no_config_is_a_clear_error(tmp_path):
    run = _run_dir_with(tmp_path, steps=())
    cfg = compose([f"run_dir={run}", "resume=true"])
    with pytest.raises(RunDirError, match="holds no complete checkpoint"):
        checkpoint.find_resume_point(run, cfg)
    (run / "checkpoints" / ".tmp-step-2-abc").mkdir(parents=True)
    with pytest.raises(RunDirError, match=r"unfinished save\(s\) .tmp-step-2-abc"):
        checkpoint.find_resume_point(run, cfg)
    (run / "checkpoints" / "step-2").mkdir()
    (run / "config.yaml").unlink()
    with pytest.raises(ConfigError, match="config.yaml' is missing"):
        checkpoint.find_resume_point(run, cfg)
    assert checkpoint.find_resume_point(run, compose([f"run_dir={run}", "resume=true", "resume_force=true"])).step == 2


def test_config_changes_lists_each_key():
    assert checkpoint.config_changes({"a": 1, "b.c": "x", "d": 2}, {"a": 1, "b.c": "y", "e": 3}) == [
        "b.c: 'x' -> 'y'", "d: 2 -> '<absent>'", "e: '<absent>' -> 3"]


def test_prepare_resume_cuts_metrics_back_to_the_checkpoint(tmp_path):
    rd = RunDir(tmp_path, main=True)
    root = tmp_path / "checkpoints"
    for name in ("step-4", ".tmp-step-6-abc", ".old-step-2"):
        (root / name).mkdir(parents=True)
    lines = [{"step": s, "time_s": 1.5 * s, "train/loss": 9.0 - s} for s in range(1, 7)]
    text = "".join(json.dumps(x) + "\n" for x in lines) + '{"step": 7, "time_s": 10.'  # the kill cut this line
    (tmp_path / "metrics.jsonl").write_text(text)
    last = checkpoint.prepare_resume(rd, checkpoint.ResumePoint(4, root / "step-4"))
    assert last == 6.0
    kept = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kept == lines[:4]
    assert sorted(p.name for p in root.iterdir()) == ["step-4"]
    # the resumed run's clock continues from the last kept line
    logger = MetricsLogger(rd, time_offset=last)
    logger.log({"train/loss": 4.0}, step=5)
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 5 and 6.0 <= row["time_s"] < 60.0


def test_prepare_resume_keeps_the_lines_a_staged_run_had_when_it_saved(tmp_path):
    """Two training stages whose steps both count from 1: the line count stored in the checkpoint decides."""
    rd = RunDir(tmp_path, main=True)
    lines = [{"step": s, "time_s": float(i), "train/stage1/loss": 1.0} for i, s in enumerate(range(1, 7))]
    lines += [{"step": s, "time_s": 6.0 + s, "train/stage2/loss": 2.0} for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    stage1, stage2 = tmp_path / "checkpoints" / "stage1" / "step-6", tmp_path / "checkpoints" / "stage2" / "step-2"
    for ckpt, count in ((stage1, 6), (stage2, 8)):
        ckpt.mkdir(parents=True)
        (ckpt / "runner_state.json").write_text(json.dumps({"step": int(ckpt.name[5:]), "metrics_lines": count}))
    assert checkpoint.prepare_resume(rd, checkpoint.ResumePoint(2, stage2)) == 8.0
    assert [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == lines[:8]
    # killed in stage 2 before it saved: back to stage 1's last checkpoint, stage 2's lines go
    assert checkpoint.prepare_resume(rd, checkpoint.ResumePoint(6, stage1)) == 5.0
    assert [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == lines[:6]


def test_write_failures_are_recognised(tmp_path):
    assert checkpoint.write_failure(OSError(28, "No space left on device"), tmp_path) == "No space left on device"
    assert checkpoint.write_failure(RuntimeError("File too large (errno 27)"), tmp_path) == "File too large"
    assert checkpoint.write_failure(RuntimeError("unexpected pos 289216 vs 289108"), tmp_path) is None  # disk fine
    with pytest.raises(ValueError, match="a bug"):  # not a disk problem: re-raised as is, nothing left behind
        with checkpoint.atomic_dir(tmp_path / "step-1"):
            raise ValueError("a bug")
    assert list(tmp_path.iterdir()) == []


def test_config_checks_hydra_lets_through(tmp_path):
    cfg = compose([f"run_dir={tmp_path}", "model.name=???"])
    assert missing_keys(cfg) == ["model.name"]
    with pytest.raises(ConfigError, match="required key"):
        from runner.config import validate

        validate(cfg)
    ok = compose([f"run_dir={tmp_path}", "experiment=demo"], return_hydra_config=True)
    check_group_choices(ok)
    bad = compose([f"run_dir={tmp_path}", "experiment=dem"], return_hydra_config=True)  # Hydra skips it silently
    assert (ok.train.lr, bad.train.lr) == (3e-3, 2e-5)
    with pytest.raises(ConfigError, match="'experiment=dem'.*Valid options: demo"):
        check_group_choices(bad)


def test_run_dir_refusals(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        RunDir(tmp_path / "file", main=True).check_fresh(resume=False)


def test_secrets_are_filtered_from_log_records_and_hydra_files(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_API_TOKEN", "tok-planted-1234")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "loading with %s", ("tok-planted-1234",), None)
    assert SecretsFilter().filter(record) and record.getMessage() == "loading with ***"
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- logger.entity=tok-planted-1234\n")
    RunDir(tmp_path, main=True).redact_hydra_files()
    assert (tmp_path / ".hydra" / "overrides.yaml").read_text() == "- logger.entity=***\n"


def test_resuming_without_a_checkpoint_logs_every_step_again(tmp_path):
    """A recipe that resumes without a checkpoint (probing: cached features; OXA: finished stages) trains again from
    the start: the killed run's lines go, so none is duplicated."""
    rd = RunDir(tmp_path, main=True)
    (tmp_path / "checkpoints" / ".tmp-step-3-x").mkdir(parents=True)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "time_s": 1.0}\n{"step": 2, "time_s": 2.0}\n')
    assert checkpoint.prepare_resume(rd, checkpoint.ResumePoint(0, None)) == 0.0
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    assert list((tmp_path / "checkpoints").iterdir()) == []
