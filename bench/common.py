"""What every benchmark shares: paths, the 20M-parameter benchmark model, timed subprocesses with peak RSS.

A subprocess is timed from ``Popen`` to its exit (whole-process wall time, interpreter start and imports included),
and its peak resident set size is read from ``os.wait4``'s ``ru_maxrss`` (the kernel's high-water mark of the
process, in KiB on Linux). Nothing here imports torch.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
SHARED_DATA = REPO.parent / "shared" / "data"
PYTHON = sys.executable
RUN = str(Path(sys.executable).parent / "run")

MODEL_20M = [
    "model=tiny-llama",
    "model.architecture.hidden_size=512",
    "model.architecture.intermediate_size=1408",
    "model.architecture.num_hidden_layers=6",
    "model.architecture.num_attention_heads=8",
    "model.architecture.num_key_value_heads=8",
]
"""The benchmark model: tiny-llama's LLaMA architecture and tokenizer (vocab 2048) widened to hidden 512, 6 layers,
8 heads, FFN 1408: 21.4M parameters, built offline like every tiny model."""


def env(**extra: str) -> dict[str, str]:
    """The environment of benchmark subprocesses: the caller's, offline, no tokenizer thread pool, plus ``extra``."""
    out = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "120"}
    out.update(extra)
    return out


@dataclass
class Proc:
    """A finished subprocess: exit status, whole-process wall seconds, CPU seconds (user + system, all threads),
    peak RSS bytes, captured output."""

    cmd: list[str]
    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_bytes: int
    stdout: str
    stderr: str

    def check(self) -> Proc:
        """Raise RuntimeError with the tail of stderr when the process failed."""
        if self.returncode != 0:
            raise RuntimeError(f"{' '.join(self.cmd)[:300]} exited {self.returncode}:\n{self.stderr[-3000:]}")
        return self


def timed(cmd: list[str], *, cwd: Path = REPO, environ: dict[str, str] | None = None,
          timeout: float = 1800) -> Proc:
    """Run ``cmd``; measure its wall time (Popen to exit) and peak RSS (``wait4``'s ``ru_maxrss``).

    Output goes to temporary files (no pipe to drain while the clock runs). A process still running after
    ``timeout`` seconds is killed and reported with return code -9.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=cwd, env=environ or env(), stdout=out, stderr=err)
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Proc(cmd, p.returncode, wall, usage.ru_utime + usage.ru_stime, int(usage.ru_maxrss) * 1024, out.read().decode(errors="replace"),
                    err.read().decode(errors="replace"))


def git_sha() -> str:
    """Short sha of HEAD (``+dirty`` when tracked files changed), or ``nogit``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "nogit"
    return (sha or "nogit") + ("-dirty" if dirty else "")


def today() -> str:
    return _dt.date.today().isoformat()


def machine() -> dict[str, object]:
    """Cores, load average at the time of the call, Python and package versions (for the results file)."""
    from importlib import metadata

    versions = {}
    for name in ("torch", "transformers", "trl", "hydra-core"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0], "packages": versions}


def workdir(name: str) -> Path:
    """A fresh scratch dir for one benchmark: ``bench/work/<name>`` (git-ignored), emptied first."""
    path = BENCH / "work" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)
