"""Benchmark 3: how fast ``run`` answers when it has nothing to train, against a no-op ``@hydra.main`` app.

Three commands, each timed as a whole process (interpreter start to exit): ``run --help``, ``run --cfg job`` (compose
the default config and print it) and ``run train.lrr=1`` (a config error: one paragraph, exit 1). The floor is
``bench/reference/hydra_noop.py`` given the same three (``--help``, ``--cfg job``, ``lrr=1``): Python start-up plus
Hydra. The sides alternate A B A B per command. Target: every runner median under 0.5 s.
"""

from __future__ import annotations

from typing import Any

from bench import stats
from bench.common import BENCH, PYTHON, RUN, say, timed

QUICK = {"repeats": 3, "warmup": 1}
FULL = {"repeats": 10, "warmup": 1}
TARGET_S = 0.5

COMMANDS = {
    "--help": (["--help"], ["--help"], 0),
    "--cfg job": (["--cfg", "job"], ["--cfg", "job"], 0),
    "config error": (["train.lrr=1"], ["lrr=1"], 1),
}
"""name -> (runner args, no-op app args, expected exit status)."""


def run(quick: bool) -> dict[str, Any]:
    p = QUICK if quick else FULL
    noop = [PYTHON, str(BENCH / "reference" / "hydra_noop.py")]
    out: dict[str, Any] = {"setup": p, "commands": {}, "target": {"max_median_s": TARGET_S}}
    for name, (runner_args, noop_args, code) in COMMANDS.items():
        def side(cmd: list[str], expect: int):
            def f(i: int) -> float:
                proc = timed(cmd)
                if proc.returncode != expect:
                    raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode} (expected {expect}):\n"
                                       f"{proc.stderr[-2000:]}")
                return proc.wall_s
            return f

        res = stats.alternate({"runner": side([RUN, *runner_args], code), "noop": side([*noop, *noop_args], code)},
                              p["repeats"], warmup=p["warmup"], log=lambda m, n=name: say(f"cli {n} {m}"))
        cmp = stats.compare(res["runner"], res["noop"])
        cmp["met"] = cmp["runner"]["median"] < TARGET_S
        out["commands"][name] = cmp
    return out
