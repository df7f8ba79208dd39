"""Logging services: quiet third-party output, trackers (none, wandb, tensorboard), metrics.jsonl, progress bars.

Python ``logging`` goes through Hydra's job logging (console + ``<run dir>/run.log``); ``rich`` draws progress bars
for training, generation and evaluation. Only rank 0 logs metrics and writes files. Every tracker is finished in a
``finally`` by the CLI, failed run or not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from runner.outputs import RunDir, is_main_process, redact

log = logging.getLogger("runner")


def quiet_libraries() -> None:
    """Silence progress bars and chatter of transformers / datasets / deepspeed (our own bars and logs remain)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:
        pass
    for name in ("DeepSpeed", "deepspeed", "torch.distributed.elastic", "httpx", "compilers"):
        logging.getLogger(name).setLevel(logging.WARNING)  # "compilers": DeepSpeed's op builders probing gcc
    # DeepSpeed calls collectives that torch marks deprecated, once per call: not the user's concern.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)


# --------------------------------------------------------------------------------------------------------------------
# Trackers
# --------------------------------------------------------------------------------------------------------------------


class Tracker:
    """A metrics sink beyond the run dir. The base class tracks nothing (``logger=none``)."""

    name = "none"

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Record ``metrics`` at optimizer step ``step``."""

    def summary(self, metrics: Mapping[str, Any]) -> None:
        """Record final metrics."""

    def finish(self, failed: bool = False) -> None:
        """Close the tracker (always called, also after a failure)."""


class WandbTracker(Tracker):
    """Weights & Biases; offline (no network) unless an API key is set or ``logger.mode=online``."""

    name = "wandb"

    def __init__(self, cfg: Any, run_dir: RunDir, config: Mapping[str, Any]):
        import wandb

        mode = cfg.logger.mode
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        self.wandb = wandb
        # Credential values never reach wandb: config, names and tags are redacted, and so is the command line
        # that wandb records in its run metadata (sys.argv, restored right after).
        argv = sys.argv
        sys.argv = redact(list(argv))
        try:
            self.run = wandb.init(project=redact(cfg.logger.project), entity=redact(cfg.logger.entity),
                                  dir=str(run_dir.path), config=redact(dict(config)), name=redact(run_dir.path.name),
                                  tags=redact(list(cfg.logger.tags)), mode=mode, reinit="finish_previous")
        finally:
            sys.argv = argv

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def summary(self, metrics: Mapping[str, Any]) -> None:
        self.run.summary.update(dict(metrics))

    def finish(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class TensorboardTracker(Tracker):
    """TensorBoard event files under ``<run dir>/tensorboard``."""

    name = "tensorboard"

    def __init__(self, cfg: Any, run_dir: RunDir, config: Mapping[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.logged: set[str] = set()
        self.last_step = 0

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)
                self.logged.add(key)
        self.last_step = max(self.last_step, step)

    def summary(self, metrics: Mapping[str, Any]) -> None:
        """Final metrics not already on a curve (e.g. the final evaluation), at the last step."""
        self.log({k: v for k, v in metrics.items() if k not in self.logged}, step=self.last_step)

    def finish(self, failed: bool = False) -> None:
        self.writer.close()


def make_tracker(cfg: Any, run_dir: RunDir, config: Mapping[str, Any]) -> Tracker:
    """The tracker chosen by ``logger.name`` (a no-op tracker on ranks other than 0)."""
    if not is_main_process() or cfg.logger.name == "none":
        return Tracker()
    if cfg.logger.name == "wandb":
        return WandbTracker(cfg, run_dir, config)
    return TensorboardTracker(cfg, run_dir, config)


class MetricsLogger:
    """Writes one ``metrics.jsonl`` line per logged step and forwards it to the tracker (rank 0 only).

    Args:
        run_dir: where ``metrics.jsonl`` is.
        tracker: the tracker (none by default).
        time_offset: seconds already spent by the run (a resumed run's ``time_s`` continues from its last line).
    """

    def __init__(self, run_dir: RunDir, tracker: Tracker | None = None, time_offset: float = 0.0):
        self.run_dir = run_dir
        self.tracker = tracker or Tracker()
        self.t0 = time.time() - time_offset
        path = run_dir / "metrics.jsonl"
        self.lines = len(path.read_text(encoding="utf-8").splitlines()) if run_dir.main and path.exists() else 0
        """Lines in ``metrics.jsonl`` so far (a checkpoint records it, so a resume cuts exactly what came after)."""

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        row = {"step": int(step), "time_s": round(time.time() - self.t0, 3)}
        row.update({k: v for k, v in metrics.items()})
        self.run_dir.append_jsonl("metrics.jsonl", [row])
        self.lines += 1
        self.tracker.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step)


# --------------------------------------------------------------------------------------------------------------------
# Progress bars
# --------------------------------------------------------------------------------------------------------------------


class _Bar:
    def __init__(self, progress: Any, task: Any):
        self.progress, self.task = progress, task

    def advance(self, n: int = 1, **fields: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=n, **fields)

    def update(self, **fields: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, **fields)


@contextlib.contextmanager
def progress(description: str, total: int | None) -> Iterator[_Bar]:
    """A ``rich`` progress bar (rank 0 only; disabled with ``RUNNER_PROGRESS=0``).

    Usage: ``with progress("train", steps) as bar: ... bar.advance(1, info="loss 1.23")``.
    """
    if not is_main_process() or os.environ.get("RUNNER_PROGRESS", "1") == "0":
        yield _Bar(None, None)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, transient=False) as prog:
        task = prog.add_task(description, total=total, info="")
        yield _Bar(prog, task)
