"""The summary of a multirun sweep: one row per job (its overrides, status, key metrics, wall time).

At the end of ``run -m ...`` the Hydra callback :class:`SummaryCallback` (``hydra.callbacks.summary`` in
``conf/config.yaml``) writes, in the sweep dir:

* ``summary.csv``: every numeric metric of every job (``metrics.json``), one row per job;
* ``summary.md``: the same rows with the key metrics only (a Markdown table);
* ``summary.png``: the sweep's main metric per job as a horizontal bar chart (failed jobs marked).

``run-report <sweep dir>`` rebuilds the three files from the job dirs (e.g. after a sweep on a cluster, or after a
job was re-run). A job dir is a sub-directory of the sweep dir that holds ``.hydra/overrides.yaml`` or
``status.json``; its status comes from ``status.json`` (``completed``, ``failed``, ``dry_run``, ``running``: a job
that never finished), ``missing`` when there is none.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.errors import RunDirError

log = logging.getLogger("runner")

MAIN_METRICS = ("eval/accuracy", "eval/pass@1", "eval/score", "eval/bleu", "train/loss")
"""Candidates for the plot's metric, in order of preference: the first one any job reports."""
KEY_METRICS = ("eval/accuracy", "eval/pass@1", "train/loss", "train/loss_last", "train/steps",
               "train/trainable_params")
"""Columns of ``summary.md`` (when any job reports them), after the main metric."""
SUMMARY_FILES = ("summary.csv", "summary.md", "summary.png")


@dataclass
class JobRow:
    """One job of a sweep."""

    job: str
    """The job dir's name (``<num>_<overrides>``)."""
    overrides: list[str]
    """The job's command-line overrides (``.hydra/overrides.yaml``)."""
    status: str
    """``completed``, ``failed``, ``dry_run``, ``running`` (never finished) or ``missing`` (no ``status.json``)."""
    wall_s: float | None
    """Wall time of the job in seconds (``status.json``)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Numeric final metrics (``metrics.json``)."""
    error: str | None = None
    """The failure's message (its first line), for failed jobs."""

    def label(self, common: Sequence[str] = ()) -> str:
        """The job's overrides without those ``common`` to every job of the sweep."""
        own = [o for o in self.overrides if o not in common]
        return " ".join(own or self.overrides) or self.job


def common_overrides(rows: Sequence[JobRow]) -> list[str]:
    """Overrides that every job of the sweep has (in the first job's order); empty for a single job."""
    if len(rows) < 2:
        return []
    return [o for o in rows[0].overrides if all(o in r.overrides for r in rows[1:])]


def _job_key(path: Path) -> tuple[int, str]:
    m = re.match(r"^(\d+)(?:_|$)", path.name)
    return (int(m.group(1)) if m else 10**9, path.name)


def job_dirs(sweep_dir: str | Path) -> list[Path]:
    """The job dirs of a sweep, in job-number order."""
    root = Path(sweep_dir)
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
             and ((p / ".hydra" / "overrides.yaml").exists() or (p / "status.json").exists())]
    return sorted(found, key=_job_key)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _overrides(job: Path) -> list[str]:
    path = job / ".hydra" / "overrides.yaml"
    if path.exists():
        from omegaconf import OmegaConf

        try:
            return [str(x) for x in OmegaConf.load(path)]
        except Exception:  # a broken file: fall back to the dir name
            pass
    name = re.sub(r"^\d+_?", "", job.name)
    return [x for x in name.split(",") if x]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return value
    return None


def collect(sweep_dir: str | Path) -> list[JobRow]:
    """Read every job dir of ``sweep_dir`` into a :class:`JobRow`.

    Raises:
        RunDirError: ``sweep_dir`` is not a directory or holds no job dir.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise RunDirError(f"'{sweep_dir}' is not a directory; give the sweep dir of a multirun (multirun/<date>/"
                          "<time>), which holds one dir per job.")
    jobs = job_dirs(root)
    if not jobs:
        raise RunDirError(f"'{sweep_dir}' holds no job dirs (sub-dirs with .hydra/overrides.yaml or status.json); "
                          "give the sweep dir of a multirun.")
    rows = []
    for job in jobs:
        status = _read_json(job / "status.json") or {}
        metrics = _read_json(job / "metrics.json") or {}
        numeric = {k: v for k, v in metrics.items() if _number(v) is not None} if isinstance(metrics, dict) else {}
        error = status.get("error")
        if error:
            lines = [x for x in str(error).strip().splitlines() if x.strip()]
            error = lines[-1][:300] if lines else None
        rows.append(JobRow(job=job.name, overrides=_overrides(job), status=str(status.get("status", "missing")),
                           wall_s=_number(status.get("wall_s")), metrics=numeric, error=error))
    return rows


def main_metric(rows: Sequence[JobRow]) -> str | None:
    """The first of :data:`MAIN_METRICS` that some job reports (None when no job has metrics)."""
    for name in MAIN_METRICS:
        if any(name in r.metrics for r in rows):
            return name
    return None


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1000):
        return f"{int(value)}"
    return f"{value:.4g}"


def to_csv(rows: Sequence[JobRow]) -> str:
    """``job, overrides, status, wall_s, error`` then every metric any job reports (sorted)."""
    metrics = sorted({k for r in rows for k in r.metrics})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["job", "overrides", "status", "wall_s", *metrics, "error"])
    for r in rows:
        writer.writerow([r.job, " ".join(r.overrides), r.status, "" if r.wall_s is None else r.wall_s,
                         *["" if k not in r.metrics else r.metrics[k] for k in metrics], r.error or ""])
    return buf.getvalue()


def to_markdown(rows: Sequence[JobRow], title: str = "Sweep summary") -> str:
    """A Markdown table: ``#``, overrides (those every job shares are listed once above the table), status, the
    main metric and :data:`KEY_METRICS`, wall time; then the failures' messages."""
    main = main_metric(rows)
    keys = [k for k in ((main,) if main else ()) + KEY_METRICS if any(k in r.metrics for r in rows)]
    keys = list(dict.fromkeys(keys))
    done = sum(r.status == "completed" for r in rows)
    failed = [r for r in rows if r.status == "failed"]
    common = common_overrides(rows)
    out = [f"# {title}", "", f"{len(rows)} jobs: {done} completed, {len(failed)} failed"
           + (f", {len(rows) - done - len(failed)} other" if len(rows) - done - len(failed) else "") + ".", ""]
    if common:
        out += ["Every job: `" + " ".join(common) + "`", ""]
    header = ["#", "overrides", "status", *keys, "wall time (s)"]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "|".join(["---"] * 3 + ["---:"] * (len(keys) + 1)) + "|")
    for r in rows:
        num = _job_key(Path(r.job))[0]
        cells = [str(num) if num < 10**9 else r.job, "`" + r.label(common) + "`" if r.overrides else "",
                 f"**{r.status}**" if r.status == "failed" else r.status,
                 *[_fmt(r.metrics.get(k)) for k in keys], _fmt(r.wall_s)]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if failed:
        out += ["", "Failures:", ""]
        out += [f"- `{r.job}`: {r.error or 'no message'}" for r in failed]
    return "\n".join(out) + "\n"


def plot(rows: Sequence[JobRow], path: str | Path, metric: str | None = None) -> Path:
    """``summary.png``: ``metric`` (default :func:`main_metric`) per job as horizontal bars, labelled with the job's
    overrides and value, and ``train/loss`` beside it when the main metric is another one; jobs without the metric
    (failed, dry-run) are named with their status, in red when failed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = metric or main_metric(rows)
    metrics = [metric] if metric else [None]
    if metric and metric != "train/loss" and any("train/loss" in r.metrics for r in rows):
        metrics.append("train/loss")
    common = common_overrides(rows)
    labels = [f"{_job_key(Path(r.job))[0]}: {r.label(common)}"[:70] for r in rows]
    height = max(2.5, 0.45 * len(rows) + 1.5)
    fig, axes = plt.subplots(1, len(metrics), figsize=(10 + 4 * (len(metrics) - 1), height), dpi=110,
                             sharey=True, squeeze=False)
    ys = list(range(len(rows)))[::-1]
    colors = ["#4C72B0" if r.status == "completed" else "#C44E52" if r.status == "failed" else "#999999"
              for r in rows]
    for ax, name in zip(axes[0], metrics):
        values = [r.metrics.get(name) if name else None for r in rows]
        present = [v for v in values if v is not None]
        span = max((abs(v) for v in present), default=0.0) or 1.0  # all zero (or none): a 0-1 axis
        ax.barh(ys, [v if v is not None else 0 for v in values], color=colors, height=0.6)
        for y, v, r in zip(ys, values, rows):
            ax.text((v if v is not None else 0) + 0.01 * span, y, _fmt(v) if v is not None else r.status,
                    va="center", fontsize=9, color="black" if v is not None else "#C44E52")
        ax.set_xlabel(name or "(no metric reported)")
        ax.set_xlim(min(0, min(present, default=0)) * 1.1, span * 1.2)
        ax.set_title(name or "no metric", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(ys)
    axes[0][0].set_yticklabels(labels, fontsize=9)
    fig.suptitle(f"{len(rows)} jobs, {sum(r.status == 'completed' for r in rows)} completed", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_summary(sweep_dir: str | Path) -> dict[str, Path]:
    """Write ``summary.csv``, ``summary.md`` and ``summary.png`` in ``sweep_dir``; returns their paths.

    Raises:
        RunDirError: no job dirs in ``sweep_dir``, or the files cannot be written.
    """
    from runner.outputs import atomic_write_text

    root = Path(sweep_dir)
    rows = collect(root)
    atomic_write_text(root / "summary.csv", to_csv(rows))
    atomic_write_text(root / "summary.md", to_markdown(rows, title=f"Sweep {root}"))
    try:
        plot(rows, root / "summary.png")
    except OSError as ex:
        raise RunDirError(f"cannot write '{root / 'summary.png'}': {ex.strerror or ex}.") from None
    return {name: root / name for name in SUMMARY_FILES}


try:  # Hydra is a dependency; the guard keeps `run-report` importable on its own
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[misc,assignment]


class SummaryCallback(Callback):
    """Hydra callback: at the end of a multirun, write the sweep's summary files (a failure to write them is
    logged; it never fails the sweep)."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            paths = write_summary(sweep_dir)
        except Exception as ex:  # the sweep's results stay; only the summary is missing
            log.error("could not write the sweep summary in %s: %s", sweep_dir, ex)
            return
        log.info("sweep summary: %s", ", ".join(str(p) for p in paths.values()))
        sys.stdout.write((sweep_dir / "summary.md").read_text(encoding="utf-8"))


def main(argv: Sequence[str] | None = None) -> None:
    """``run-report <sweep dir>``: rebuild ``summary.csv``, ``summary.md`` and ``summary.png`` from the job dirs."""
    parser = argparse.ArgumentParser(prog="run-report", description=main.__doc__)
    parser.add_argument("sweep_dir", help="the sweep dir of a multirun (holds one dir per job)")
    args = parser.parse_args(argv)
    try:
        paths = write_summary(args.sweep_dir)
    except RunDirError as ex:
        sys.stderr.write(ex.paragraph() + "\n")
        sys.exit(1)
    sys.stdout.write(paths["summary.md"].read_text(encoding="utf-8"))
    sys.stdout.write("wrote " + ", ".join(str(p) for p in paths.values()) + "\n")


if __name__ == "__main__":
    main()
