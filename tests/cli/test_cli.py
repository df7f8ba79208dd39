"""The ``run`` command as a user types it (subprocess): help, config errors, dry-runs, the run-dir refusal."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_cli


def _one_paragraph_error(proc, *needles: str) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err and "Traceback" not in proc.stdout
    assert "\n" not in err, err  # one paragraph
    for n in needles:
        assert n in err, err
    return err


def test_cli_module_imports_no_torch():
    code = "import sys, runner.cli, runner.config, runner.registry; runner.config.register_configs(); " \
           "print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_help_lists_groups():
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert "model " in proc.stdout and "tiny-llama" in proc.stdout and "slam" in proc.stdout


def test_cfg_job_prints_the_composed_config():
    proc = run_cli("--cfg", "job", "method=slam")
    assert proc.returncode == 0
    assert "name: slam" in proc.stdout and "up_proj" in proc.stdout


@pytest.mark.parametrize("args,needles", [
    (["train.lr=abc"], ["train.lr", "Float"]),
    (["train.lrr=1e-4"], ["train.lrr", "Did you mean 'train.lr'"]),
    (["model=nope"], ["model=nope", "tiny-llama", "llama2-7b"]),
    (["method=slam", "method.layers=[0,99]"], ["method.layers", "outside [0, 7]"]),
    (["train.micro_batch_size=2", "train.global_batch_size=3"], ["train.global_batch_size", "train.micro_batch_size"]),
    (["train.lr=="], ["Could not parse"]),
    (["method=oxa", "method.ul_per_global_batch=4"], ["method.ul_per_global_batch", "lie in [0, 3]"]),
    (["method=oxa", "method.stage=bogus", "method.promote.sigma=0"], ["valid stages: score, promote", "sigma > 0"]),
    (["method=oxa", "method.promote.muu=3"], ["method.promote.muu"]),
    (["method=gram", "method.stage=3", "method.label_smoothing=1"], ["valid stages: 1, 2, all", "[0, 1)"]),
    (["method=gram", "method.init_from=/x"], ["method.init_from", "stage 2"]),
    (["data=math500", "data.answer_match=exact"], ["data.answer_match", "numeric, math_verify"]),
    (["eval.num_samples=4", "eval.pass_at_k=[1,8]", "eval.temperature=0.6"], ["eval.pass_at_k", "[8]"]),
])
def test_config_errors_are_one_paragraph_exit_1(tmp_path, args, needles):
    proc = run_cli(*args, f"hydra.run.dir={tmp_path / 'run'}")
    _one_paragraph_error(proc, *needles)
    assert not (tmp_path / "run").exists()  # refused before Hydra created anything


def test_dry_run_llama2_7b(tmp_path):
    proc = run_cli("model=llama2-7b", "dry_run=true", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert "6,738,415,616 (6.74B)" in proc.stdout
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["total_params"] == plan["trainable_params"] == 6_738_415_616
    for key in ("total_params", "trainable_params", "trainable_fraction", "train_rows", "steps", "memory_gb"):
        assert key in plan
    assert plan["train_rows"] == 11 * 256 and plan["steps"] == 704
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("model,fraction,trainable", [("llama2-7b", "8.03%", "541,065,216"),
                                                      ("llama2-13b", "6.53%", "849,346,560")])
def test_dry_run_slam_percentages(tmp_path, model, fraction, trainable):
    proc = run_cli(f"model={model}", "method=slam", "dry_run=true", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert f"{trainable} ({fraction})" in proc.stdout


def test_dry_run_reports_every_plan_problem(tmp_path):
    proc = run_cli("train.max_seq_len=8", "dry_run=true", f"hydra.run.dir={tmp_path}")
    _one_paragraph_error(proc, "train.max_seq_len=8")


def test_a_second_run_into_the_same_dir_is_refused(tmp_path):
    (tmp_path / "metrics.json").write_text('{"train/loss": 1.0}')
    proc = run_cli("train.max_steps=1", f"hydra.run.dir={tmp_path}")
    _one_paragraph_error(proc, "already holds a run's results", "resume=true")
    assert (tmp_path / "metrics.json").read_text() == '{"train/loss": 1.0}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
