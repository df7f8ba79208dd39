"""``python -m bench.run [--quick] [--only NAME,...]``: run the benchmarks, write the results JSON, regenerate the table.

Benchmarks (``--only`` takes these names): ``cli_latency`` (3), ``dryrun`` (4), ``overhead`` (1, and the RSS half
of 5), ``memory`` (the SLAM half of 5), ``throughput`` (2). Subprocess benchmarks run first, then the in-process
ones (they import torch into this process). A benchmark that fails is recorded under ``errors`` and the others still
run; the exit status is then 1.

Results: ``bench/results/<date>-<git sha>.json`` (``-quick`` appended in quick mode, so a quick run never overwrites
a full one) and the table in ``bench/README.md``. ``--quick`` is sized to finish in under 3 minutes on an idle
2-core machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback

from bench.common import REPO, RESULTS, git_sha, machine, say, today

ORDER = ("cli_latency", "dryrun", "overhead", "memory", "throughput")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats (under 3 minutes on 2 idle cores)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(ORDER)}")
    ap.add_argument("--no-readme", action="store_true", help="write the JSON but leave bench/README.md alone")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(ORDER)
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; valid: {', '.join(ORDER)}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    mode = "quick" if args.quick else "full"
    t0 = time.perf_counter()
    sha = git_sha()
    results = {"date": today(), "git_sha": sha, "mode": mode,
               "command": "make bench-quick" if args.quick else "make bench",
               "machine": {**machine(), "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
               "benchmarks": {}, "errors": {}, "seconds": {}}
    for name in [n for n in ORDER if n in names]:
        say(f"== {name} ({mode})")
        t = time.perf_counter()
        try:
            results["benchmarks"][name] = importlib.import_module(f"bench.{name}").run(args.quick)
        except Exception:
            results["errors"][name] = traceback.format_exc()[-4000:]
            say(f"{name} FAILED:\n{results['errors'][name]}")
        results["seconds"][name] = round(time.perf_counter() - t, 1)
        say(f"   {name}: {results['seconds'][name]} s")
    results["elapsed_s"] = round(time.perf_counter() - t0, 1)
    results["machine"]["loadavg"] = [round(x, 2) for x in os.getloadavg()]

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{results['date']}-{sha}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    say(f"results: {path.relative_to(REPO)} ({results['elapsed_s']} s)")
    if not args.no_readme:
        from bench.report import render, update_readme

        update_readme(results, str(path.relative_to(REPO)))
        print(render(results, str(path.relative_to(REPO))))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
