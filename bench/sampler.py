"""A wall-clock sampling profiler for one process, in the standard library only: where the seconds of a run go.

``python -m bench.sampler OUT.json SCRIPT [ARGS...]`` runs ``SCRIPT`` (a Python file, e.g. ``.venv/bin/run``) as
``__main__`` while a background thread records the main thread's stack every ``interval`` seconds. At exit the
samples are sorted into phases (:data:`PHASES`) and written to ``OUT.json`` as ``{"interval_s", "samples",
"phases": {name: seconds}}``. A sample belongs to the first phase whose marker appears anywhere in its stack, so
``Trainer.train`` wins over an import it triggers, and an import wins over the runner function that triggered it.
"""

from __future__ import annotations

import json
import runpy
import sys
import threading
import time
from collections import Counter

PHASES: list[tuple[str, tuple[str, ...]]] = [
    ("training (Trainer.train)", ("Trainer.train",)),
    ("imports", ("_find_and_load",)),
    ("tokenize rows", ("encode_examples", "encode")),
    ("pre-flight: compose + validate", ("preflight",)),
    ("plan (dry-run bookkeeping; its tokenizing is counted above)", ("SFTRecipe.plan", "_print_plan")),
    ("load model + tokenizer", ("load_model", "from_pretrained")),
    ("Trainer.__init__", ("Trainer.__init__", "training_arguments", "TrainingArguments.__init__")),
    ("run dir files (config, provenance, metrics, status)", ("write_config", "write_provenance", "write_metrics",
                                                             "_write_status", "write_json", "make_tracker")),
    ("summary table", ("_print_summary",)),
    ("runner: validate, hardware setup, other", ("execute",)),
    ("Hydra: compose + job setup", ("_run_hydra",)),
]
"""(phase, markers): a marker matches a function's qualified name or its last dotted part."""


def _names(frame) -> list[str]:
    out = []
    while frame is not None:
        code = frame.f_code
        out.append(getattr(code, "co_qualname", code.co_name))
        frame = frame.f_back
    return out


def classify(stack: list[str]) -> str:
    """The phase of one sample, from the function names on its stack (innermost first)."""
    names = set(stack) | {n.rsplit(".", 1)[-1] for n in stack}
    for phase, markers in PHASES:
        if any(m in names for m in markers):
            return phase
    return "other (interpreter start, module top level, exit)"


def main(argv: list[str]) -> None:
    out, script, *args = argv
    interval = 0.005
    main_id = threading.main_thread().ident
    counts: Counter[str] = Counter()
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            frame = sys._current_frames().get(main_id)
            if frame is not None:
                counts[classify(_names(frame))] += 1

    t0 = time.perf_counter()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    sys.argv = [script, *args]
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as ex:
        code = ex.code if isinstance(ex.code, int) else (0 if ex.code is None else 1)
    finally:
        stop.set()
        thread.join()
        wall = time.perf_counter() - t0
        total = sum(counts.values()) or 1
        # samples are spaced by at least `interval` (more when the GIL is busy): scale them to the measured wall time
        phases = {k: round(v / total * wall, 3) for k, v in counts.most_common()}
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"wall_s": round(wall, 3), "samples": total, "interval_s": interval, "phases": phases}, f,
                      indent=1)
    sys.exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
