"""Benchmark 4: the cost of ``dry_run=true`` for every model x method pair in ``conf/``.

The pairs are enumerated from ``conf/model/*.yaml`` and ``conf/method/*.yaml`` when the benchmark runs (methods added
later are included). Three figures:

Tiny models are built before anything is timed (building one is a one-time cost of the first run on a machine).

* **sweep**: one ``run -m model=<all> method=<all> dry_run=true`` (a Hydra multirun: imports paid once). Seconds per
  pair = the job's own ``status.json`` ``wall_s`` (validate, plan, print, write ``plan.json``); total = the whole
  process, Hydra's per-job composition included. A pair whose plan lists problems still counts (status ``failed``).
  Its floor: the no-op ``@hydra.main`` app (``bench/reference/hydra_noop.py``) swept over as many jobs
  (``-m lr=... seed=...``): Python start-up and Hydra's own per-job cost.
* **one pair, cold**: ``run model=llama2-7b method=slam dry_run=true`` as its own process, against
  ``bench/reference/meta_build.py`` (read the yaml, build the model on the meta device with ``from_config``, count
  parameters: the least a script does to get the same count), alternating A B A B.
* **every pair, cold** (full mode only): each pair as its own ``run`` process, seconds each and the total.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import stats
from bench.common import BENCH, PYTHON, REPO, RUN, say, timed, workdir

QUICK = {"sweep_repeats": 1, "repeats": 2, "warmup": 0, "cold_every_pair": False}  # the sweep warms the imports
FULL = {"sweep_repeats": 2, "repeats": 5, "warmup": 1, "cold_every_pair": True}
COLD_PAIR = ("llama2-7b", "slam")


def pairs() -> tuple[list[str], list[str]]:
    from runner.config import group_options

    return group_options("model"), group_options("method")


def _job_key(job_dir: Path) -> tuple[str, str]:
    """(model, method) from a sweep job dir named ``<n>_dry_run=true,method=M,model=X``."""
    kv = dict(x.split("=", 1) for x in job_dir.name.split("_", 1)[1].split(",") if "=" in x)
    return kv.get("model", "?"), kv.get("method", "?")


def noop_sweep(jobs: int, work: Path, i: int) -> float:
    """Wall seconds of the no-op Hydra app swept over ``jobs`` jobs (``lr`` x ``seed``)."""
    lrs = ",".join(str(k) for k in range(1, jobs + 1))
    return timed([PYTHON, str(BENCH / "reference" / "hydra_noop.py"), "-m", f"lr={lrs}",
                  f"hydra.sweep.dir={work / f'noop-sweep-{i}'}"]).check().wall_s


def sweep(models: list[str], methods: list[str], work: Path, i: int = 0) -> dict[str, Any]:
    sweep_dir = work / f"sweep-{i}"
    proc = timed([RUN, "-m", f"model={','.join(models)}", f"method={','.join(methods)}", "dry_run=true",
                  f"hydra.sweep.dir={sweep_dir}"])
    if proc.returncode != 0:
        raise RuntimeError(f"the dry-run sweep exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    jobs = {}
    done = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / "status.json").exists()]
    for job in sorted(done, key=lambda p: int(p.name.split("_", 1)[0])):
        status = json.loads((job / "status.json").read_text())
        plan = json.loads((job / "plan.json").read_text()) if (job / "plan.json").exists() else {}
        model, method = _job_key(job)
        jobs[f"{model} x {method}"] = {"s": status["wall_s"], "status": status["status"],
                                       "trainable_params": plan.get("trainable_params"),
                                       "total_params": plan.get("total_params"), "memory": plan.get("memory"),
                                       "problems": plan.get("problems") or ([status["error"]] if status.get(
                                           "error") else [])}
    missing = len(models) * len(methods) - len(jobs)
    return {"total_s": proc.wall_s, "jobs": jobs, "jobs_s_sum": sum(j["s"] for j in jobs.values()),
            "missing_jobs": missing, "peak_rss_bytes": proc.peak_rss_bytes}


def prebuild_tiny_models(models: list[str], work: Path) -> None:
    """Build the offline tiny models once before timing (a one-time cost of the first run, not of a dry-run)."""
    from runner.config import compose
    from runner.models import model_source

    for name in models:
        cfg = compose([f"model={name}", f"run_dir={work / 'unused'}"])
        if cfg.model.build == "tiny":
            model_source(cfg.model, cfg.cache_dir)


def run(quick: bool) -> dict[str, Any]:
    p = QUICK if quick else FULL
    work = workdir("dryrun")
    models, methods = pairs()
    prebuild_tiny_models(models, work)
    say(f"dry-run sweep: {len(models)} models x {len(methods)} methods")
    sweeps: list[dict[str, Any]] = []

    def runner_sweep(i: int) -> float:
        sweeps.append(sweep(models, methods, work, i))
        return sweeps[-1]["total_s"]

    res = stats.alternate({"runner": runner_sweep,
                           "noop": lambda i: noop_sweep(len(models) * len(methods), work, i)},
                          p["sweep_repeats"], warmup=0, log=lambda m: say(f"dry-run sweep {m}"))
    out: dict[str, Any] = {"setup": {**p, "models": models, "methods": methods}, "sweep": sweeps[0],
                           "sweep_vs_noop": stats.compare(res["runner"], res["noop"])}

    model, method = COLD_PAIR

    def runner_side(i: int) -> float:
        return timed([RUN, f"model={model}", f"method={method}", "dry_run=true",
                      f"hydra.run.dir={work / f'cold-{i + 100}'}"]).check().wall_s

    def reference_side(i: int) -> float:
        return timed([PYTHON, str(BENCH / "reference" / "meta_build.py"),
                      str(REPO / "conf" / "model" / f"{model}.yaml")]).check().wall_s

    res = stats.alternate({"runner": runner_side, "reference": reference_side}, p["repeats"], warmup=p["warmup"],
                          log=lambda m: say(f"dry-run {model} x {method} {m}"))
    out["cold_pair"] = {"pair": f"{model} x {method}", **stats.compare(res["runner"], res["reference"])}
    if p["cold_every_pair"]:
        each = {}
        for mo in models:
            for me in methods:
                proc = timed([RUN, f"model={mo}", f"method={me}", "dry_run=true",
                              f"hydra.run.dir={work / f'each-{mo}-{me}'}"])
                each[f"{mo} x {me}"] = {"s": proc.wall_s, "returncode": proc.returncode}
        out["cold_every_pair"] = {"pairs": each, "total_s": sum(x["s"] for x in each.values())}
    return out
