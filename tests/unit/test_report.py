"""runner/report.py: the sweep summary (csv, md, png) from job dirs, and ``run-report``."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest

from runner import report
from runner.errors import RunDirError
from tests.conftest import REPO


def _job(sweep, name, overrides, status=None, metrics=None):
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if status is not None:
        (job / "status.json").write_text(json.dumps(status))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    _job(root, "0_method=sft,seed=1", ["method=sft", "seed=1"], {"status": "completed", "wall_s": 12.5},
         {"eval/accuracy": 0.25, "eval/accuracy/de": 0.5, "train/loss": 2.0, "train/steps": 5,
          "train/slam_layers": "[0, 1]"})
    _job(root, "1_method=slam,seed=1", ["method=slam", "seed=1"],
         {"status": "failed", "wall_s": 3.0, "error": "Traceback...\nTraining error: the training loss became nan"})
    _job(root, "10_method=slam,seed=2", ["method=slam", "seed=2"], {"status": "completed", "wall_s": 9.0},
         {"eval/accuracy": 0.5, "train/loss": 1.5, "train/steps": 5})
    _job(root, "2_method=sft,seed=2", ["method=sft", "seed=2"])  # never wrote a status
    (root / "multirun.yaml").write_text("hydra: {}\n")
    (root / ".submitit").mkdir()
    return root


def test_collect_reads_every_job_in_job_order(sweep):
    rows = report.collect(sweep)
    assert [r.job.split("_")[0] for r in rows] == ["0", "1", "2", "10"]
    assert [r.status for r in rows] == ["completed", "failed", "missing", "completed"]
    assert rows[0].overrides == ["method=sft", "seed=1"] and rows[0].wall_s == 12.5
    assert rows[0].metrics == {"eval/accuracy": 0.25, "eval/accuracy/de": 0.5, "train/loss": 2.0, "train/steps": 5}
    assert rows[1].error == "Training error: the training loss became nan"
    assert report.main_metric(rows) == "eval/accuracy"


def test_summary_files(sweep):
    paths = report.write_summary(sweep)
    table = list(csv.DictReader(io.StringIO(paths["summary.csv"].read_text())))
    assert [r["status"] for r in table] == ["completed", "failed", "missing", "completed"]
    assert table[0]["overrides"] == "method=sft seed=1" and table[0]["eval/accuracy/de"] == "0.5"
    assert table[3]["eval/accuracy"] == "0.5" and table[3]["eval/accuracy/de"] == ""
    assert table[1]["error"].startswith("Training error") and table[0]["wall_s"] == "12.5"

    md = paths["summary.md"].read_text()
    assert "4 jobs: 2 completed, 1 failed, 1 other." in md
    assert "| # | overrides | status | eval/accuracy | train/loss | train/steps | wall time (s) |" in md
    assert "| 0 | `method=sft seed=1` | completed | 0.25 | 2 | 5 | 12.5 |" in md  # nothing common to all
    assert "| 1 | `method=slam seed=1` | **failed** |  |  |  | 3 |" in md
    assert "- `1_method=slam,seed=1`: Training error: the training loss became nan" in md

    png = paths["summary.png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    from PIL import Image

    with Image.open(paths["summary.png"]) as im:
        assert im.size[0] >= 1000 and im.size[1] >= 300  # 10 in wide at 110 dpi; taller with more jobs


def test_loss_is_the_main_metric_without_evaluation(tmp_path):
    root = tmp_path / "s"
    _job(root, "0_a=1", ["a=1"], {"status": "completed", "wall_s": 1}, {"train/loss": 3.0})
    _job(root, "1_a=2", ["a=2"], {"status": "completed", "wall_s": 1}, {"train/loss": 2.0})
    rows = report.collect(root)
    assert report.main_metric(rows) == "train/loss"
    assert "| 1 | `a=2` | completed | 2 | 1 |" in report.to_markdown(rows)


def test_overrides_every_job_shares_are_listed_once(tmp_path):
    root = tmp_path / "s"
    _job(root, "0_m=a", ["m=a", "train.max_steps=5"], {"status": "completed", "wall_s": 1}, {"train/loss": 3.0})
    _job(root, "1_m=b", ["m=b", "train.max_steps=5"], {"status": "completed", "wall_s": 1}, {"train/loss": 2.0})
    rows = report.collect(root)
    assert report.common_overrides(rows) == ["train.max_steps=5"]
    md = report.to_markdown(rows)
    assert "Every job: `train.max_steps=5`" in md and "| 1 | `m=b` | completed | 2 | 1 |" in md
    assert "m=b train.max_steps=5" in report.to_csv(rows)  # the csv keeps every override


def test_not_a_sweep_dir(tmp_path):
    with pytest.raises(RunDirError, match="holds no job dirs"):
        report.collect(tmp_path)
    with pytest.raises(RunDirError, match="is not a directory"):
        report.collect(tmp_path / "nope")


def test_run_report_cli_rebuilds_the_files(sweep):
    exe = str(REPO / ".venv" / "bin" / "run-report")
    cmd = [exe] if (REPO / ".venv" / "bin" / "run-report").exists() else [sys.executable, "-m", "runner.report"]
    proc = subprocess.run([*cmd, str(sweep)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "| 0 | `method=sft seed=1` | completed |" in proc.stdout
    assert all((sweep / f).exists() for f in report.SUMMARY_FILES)
    bad = subprocess.run([*cmd, str(sweep / "0_method=sft,seed=1")], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "holds no job dirs" in bad.stderr
