"""Scale-out as a user types it: GPU checks, the DeepSpeed dry-run memory plan, multi-node guards, the SLURM and
joblib launchers, and multirun sweeps with their summary files and one wandb run per job."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import run_cli

GiB = 1024**3
FAST = ["data.train_size=8", "data.eval_size=1", "eval.max_samples=1", "eval.max_new_tokens=4"]


def _one_paragraph_error(proc, *needles: str) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err and "\n" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_gpu_run_without_a_gpu_is_one_paragraph(tmp_path):
    proc = run_cli("hardware=gpu", "train.max_steps=1", f"hydra.run.dir={tmp_path}",
                   env={"CUDA_VISIBLE_DEVICES": ""})
    _one_paragraph_error(proc, "Hardware error: hardware=gpu asks for a GPU", "Run with hardware=cpu")
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.json").exists()


def test_deepspeed_dry_run_prints_a_per_gpu_estimate(tmp_path):
    proc = run_cli("model=llama2-7b", "method=slam", "hardware=deepspeed", "hardware.nproc_per_node=8",
                   "hardware.zero_stage=3", "dry_run=true", f"hydra.run.dir={tmp_path}",
                   env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr
    assert "memory per GPU" in proc.stdout and "world size 8, ZeRO-3" in proc.stdout
    plan = json.loads((tmp_path / "plan.json").read_text())
    mem = plan["memory"]
    ds = plan["extra"]["deepspeed_config"]  # the config every rank would hand to DeepSpeed
    assert ds["train_batch_size"] == 4 * 1 * 8 and ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"]
    # hand values (tests/unit/test_hardware.py): ZeRO-3 of SLAM's 541M trainable of 6.74B over 8 GPUs
    assert mem["weights_gb"] == round(1_684_603_904 / GiB, 3) and mem["optimizer_gb"] == round(946_864_128 / GiB, 3)
    assert mem["gathered_layer_gb"] == round(524_288_000 / GiB, 3) and mem["world_size"] == 8
    assert f"{mem['total_gb']:.2f} GiB" in proc.stdout
    assert not (tmp_path / "metrics.json").exists()


def test_a_plan_that_does_not_fit_the_gpu_is_refused(tmp_path):
    proc = run_cli("model=llama2-7b", "hardware=gpu", "dry_run=true", f"hydra.run.dir={tmp_path}",
                   env={"CUDA_VISIBLE_DEVICES": ""})
    _one_paragraph_error(proc, "the estimated memory per GPU is", "hardware.gpu_memory_gb is 80",
                         "hardware=deepspeed with hardware.zero_stage=2 or 3")
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["memory_gb"] > 80 and len(plan["problems"]) == 1


def test_several_nodes_need_one_shared_run_dir(tmp_path):
    proc = run_cli("hardware=deepspeed", "hardware.nnodes=2", "hardware.master_addr=node0", cwd=tmp_path,
                   env={"SLURM_JOB_ID": None})
    _one_paragraph_error(proc, "a run on 2 nodes needs the same run dir on every node", "hydra.run.dir=")
    assert not (tmp_path / "outputs").exists()


def test_an_injected_local_rank_argument_does_not_reach_hydra(tmp_path):
    proc = run_cli("--local_rank=0", "dry_run=true", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "plan.json").exists()


def test_slurm_launcher_config_and_its_sbatch_script(compose_cfg):
    from hydra.utils import get_class
    from submitit.slurm import slurm

    cfg = compose_cfg("hydra/launcher=slurm", "hardware=deepspeed", "hardware.nnodes=2", "hardware.nproc_per_node=8",
                      "hardware.master_addr=node0", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=600")
    from runner.config import compose

    full = compose(["hydra/launcher=slurm", "hardware=deepspeed", "hardware.nnodes=2", "hardware.nproc_per_node=8",
                    "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=600"], return_hydra_config=True)
    launcher = full.hydra.launcher
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 8, 1)
    assert (launcher.partition, launcher.timeout_min) == ("gpu", 600)
    # the sbatch script submitit writes from these parameters (its own name mapping)
    names = slurm.SlurmExecutor._equivalence_dict()
    params = {names.get(k, k): v for k, v in launcher.items()
              if k in ("partition", "nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "timeout_min",
                       "name")}
    script = slurm._make_sbatch_string(command="python -u -m submitit.core._submit /f", folder="/tmp/f/%j", **params)
    for line in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=gpu", "--time=600",
                 "--cpus-per-task=8"):
        assert f"#SBATCH {line}" in script
    assert cfg.hardware.nnodes == 2


def test_joblib_launcher_config(compose_cfg):
    from runner.config import compose

    launcher = compose(["hydra/launcher=parallel"], return_hydra_config=True).hydra.launcher
    assert launcher._target_.endswith("JoblibLauncher") and launcher.n_jobs == 2 and launcher.prefer == "processes"


def _wandb_exit_code(job_dir) -> int | None:
    logs = list((job_dir / "wandb").glob("offline-run-*/logs/debug.log"))
    assert len(logs) == 1, logs  # one wandb run per job, in the job's own dir
    text = logs[0].read_text()
    assert "finishing run" in text
    for line in text.splitlines():
        if "got exitcode:" in line:
            return int(line.rsplit(":", 1)[1])
    return None


@pytest.mark.slow
def test_multirun_sweep_goes_on_after_a_failure_and_writes_the_summary(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "method=sft,slam", "train.lr=1e-3,1e30", "train.max_steps=3", "logger=wandb", *FAST,
                   f"hydra.sweep.dir={sweep}", env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: int(p.name.split("_")[0]))
    assert len(jobs) == 4  # one dir per job, named after its overrides
    for job, (method, lr) in zip(jobs, [("sft", "0.001"), ("sft", "1e+30"), ("slam", "0.001"), ("slam", "1e+30")]):
        assert f"method={method}," in job.name and f"train.lr={lr}," in job.name, job.name
    status = [json.loads((p / "status.json").read_text()) for p in jobs]
    assert [s["status"] for s in status] == ["completed", "failed", "completed", "failed"]
    assert "Training error: the training loss became" in status[1]["error"]
    for job in jobs:
        assert f"run_dir: {job}" in (job / "config.yaml").read_text()
    assert json.loads((jobs[2] / "metrics.json").read_text())["train/trainable_params"] == 6 * 2 * 128 * 344
    # one wandb run per job, finished in the CLI's finally with the job's outcome
    assert [_wandb_exit_code(p) for p in jobs] == [0, 1, 0, 1]

    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["completed", "failed", "completed", "failed"]
    assert "method=sft train.lr=0.001" in rows[0]["overrides"] and float(rows[0]["train/steps"]) == 3
    assert float(rows[0]["wall_s"]) > 0 and rows[1]["error"].startswith("Training error")
    md = (sweep / "summary.md").read_text()
    assert "4 jobs: 2 completed, 2 failed." in md
    assert "Every job: `train.max_steps=3 logger=wandb" in md and "| 1 | `method=sft train.lr=1e+30` | **failed** |" in md
    assert (sweep / "summary.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 0 | `method=sft train.lr=0.001` | completed |" in proc.stdout  # the table, printed at the end


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "hydra/launcher=parallel", "seed=1,2", "train.max_steps=0", "data.eval_size=1",
                   "eval.max_samples=1", "eval.max_new_tokens=2", "hardware.num_threads=1",
                   f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1"]
    status = [json.loads((p / "status.json").read_text()) for p in jobs]
    assert [s["status"] for s in status] == ["completed", "completed"]
    (a, b) = sorted(status, key=lambda s: s["started"])
    assert b["started"] < a["started"] + a["wall_s"]  # the second job started before the first one ended
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert ["seed=1" in r["overrides"].split() for r in rows] == [True, False]
