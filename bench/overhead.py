"""Benchmark 1 (and the RSS half of 5): ``run method=sft`` against a bare ``transformers.Trainer`` script.

A: ``run method=sft`` on the 20M-parameter benchmark model (:data:`bench.common.MODEL_20M`) and the built-in
``data=arith`` training rows, ``train.max_steps=S``, ``train.micro_batch_size=B``, no evaluation and no final
checkpoint (the reference does neither), and ``train.padding_free=false``: both sides then run the same padded
batches, so the figure is the runner's overhead, not its batching (benchmark 2 measures that).
B: ``bench/reference/trainer_sft.py``: the same model directory, the same rows (rendered once by the harness into a
JSON Lines file), the same steps, batch, lr, schedule, seed and sampler, straight on ``transformers.Trainer``.

Measured per process: whole-process wall time (Popen to exit), its CPU time (user + system, all threads: less
sensitive than wall time to other work on the machine), the training phase alone (``Trainer.train()``'s own
``train_runtime``: the runner reports it as ``train/runtime_s``), and peak RSS (``wait4``). Both sides must end on the
same training loss (same batches, same updates): the result records whether they did.

Where the time goes: in full mode one more pair runs under :mod:`bench.sampler` (a stack-sampling profiler), which
splits each process's wall time into phases (imports, compose, plan, tokenize, load, Trainer.train, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import stats
from bench.common import MODEL_20M, PYTHON, REPO, RUN, say, timed, workdir

QUICK = {"steps": 3, "batch_size": 8, "repeats": 2, "warmup_steps": 1, "profile": False}
FULL = {"steps": 20, "batch_size": 8, "repeats": 4, "warmup_steps": 1, "profile": True}


def prepare(work: Path) -> tuple[Path, Path]:
    """Write the arith training rows as ``{"prompt", "completion"}`` JSON Lines; build (once) and locate the model.

    Returns:
        (rows file, model dir).
    """
    from runner import data as data_lib
    from runner.config import compose
    from runner.models import model_source

    cfg = compose([*MODEL_20M, "data=arith", f"run_dir={work / 'unused'}"])
    rows = work / "rows.jsonl"
    with rows.open("w", encoding="utf-8") as f:
        for ex in data_lib.load_split(cfg.data, cfg.data.train_split):
            prompt, completion = data_lib.render(ex, cfg.data)
            f.write(json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False) + "\n")
    return rows, Path(model_source(cfg.model, cfg.cache_dir))


def runner_cmd(run_dir: Path, steps: int, batch_size: int) -> list[str]:
    return [RUN, *MODEL_20M, "method=sft", "data=arith", f"train.max_steps={steps}",
            f"train.micro_batch_size={batch_size}", "eval.enabled=false", "train.save_final=false",
            "train.padding_free=false", f"hydra.run.dir={run_dir}"]


def reference_cmd(model_dir: Path, rows: Path, out: Path, steps: int, batch_size: int) -> list[str]:
    return [PYTHON, str(REPO / "bench" / "reference" / "trainer_sft.py"), "--model", str(model_dir), "--rows",
            str(rows), "--out", str(out), "--max-steps", str(steps), "--batch-size", str(batch_size), "--lr", "2e-5",
            "--scheduler", "cosine", "--sampling", "group_by_length", "--max-len", "512", "--seed", "0"]


def run(quick: bool) -> dict[str, Any]:
    p = QUICK if quick else FULL
    work = workdir("overhead")
    rows, model_dir = prepare(work)

    def side_a(i: int) -> dict[str, Any]:
        steps = p["steps"] if i >= 0 else p["warmup_steps"]
        d = work / f"runner-{i + 100}"
        proc = timed(runner_cmd(d, steps, p["batch_size"])).check()
        m = json.loads((d / "metrics.json").read_text())
        return {"wall_s": proc.wall_s, "cpu_s": proc.cpu_s, "train_s": m["train/runtime_s"],
                "rss": proc.peak_rss_bytes, "loss": m["train/loss"], "steps": m["train/steps"]}

    def side_b(i: int) -> dict[str, Any]:
        steps = p["steps"] if i >= 0 else p["warmup_steps"]
        proc = timed(reference_cmd(model_dir, rows, work / f"ref-{i + 100}", steps, p["batch_size"])).check()
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        return {"wall_s": proc.wall_s, "cpu_s": proc.cpu_s, "train_s": out["train_runtime_s"],
                "rss": proc.peak_rss_bytes, "loss": out["train_loss"], "steps": out["steps"]}

    res = stats.alternate({"runner": side_a, "reference": side_b}, p["repeats"], warmup=1,
                          log=lambda m: say(f"overhead {m}"))
    a, b = res["runner"], res["reference"]
    profile = None
    if p["profile"]:
        say("overhead: one more pair under bench.sampler (where the time goes)")
        profile = {}
        for name, cmd in (("runner", runner_cmd(work / "runner-profiled", p["steps"], p["batch_size"])),
                          ("reference", reference_cmd(model_dir, rows, work / "ref-profiled", p["steps"],
                                                      p["batch_size"]))):
            out_json = work / f"profile-{name}.json"
            script_and_args = cmd if name == "runner" else cmd[1:]  # the sampler runs a script, not the interpreter
            timed([PYTHON, "-m", "bench.sampler", str(out_json), *script_and_args]).check()
            profile[name] = json.loads(out_json.read_text())
    losses_equal = all(abs(x["loss"] - y["loss"]) <= 1e-5 * max(1.0, abs(y["loss"])) for x, y in zip(a, b))
    return {
        "setup": {**p, "model": "21.4M-parameter LLaMA (tiny-llama widened: " + " ".join(MODEL_20M[1:]) + ")",
                  "data": "data=arith train rows (2,816)", "steps_done": [x["steps"] for x in a]},
        "whole_process_s": stats.compare([x["wall_s"] for x in a], [y["wall_s"] for y in b]),
        "whole_process_cpu_s": stats.compare([x["cpu_s"] for x in a], [y["cpu_s"] for y in b]),
        "train_phase_s": stats.compare([x["train_s"] for x in a], [y["train_s"] for y in b]),
        "peak_rss_bytes": stats.compare([x["rss"] for x in a], [y["rss"] for y in b]),
        "extra_s": stats.summary([x["wall_s"] - y["wall_s"] for x, y in zip(a, b)]),
        "losses": {"runner": [x["loss"] for x in a], "reference": [y["loss"] for y in b], "equal": losses_equal},
        "profile": profile,
        "target": {"figure": "whole_process_s", "max_ratio": 1.02},
    }
