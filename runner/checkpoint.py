"""Checkpoints in the run dir: ``checkpoints/step-N/``, written atomically, listed, pruned, resumed from.

A checkpoint is written into a hidden temporary dir (``checkpoints/.tmp-step-N-*``) and renamed into place only when
it is complete, so a kill during a save leaves the previous checkpoints whole and never a half-written ``step-N``;
leftover temporary dirs are ignored by :func:`list_checkpoints` and removed by :func:`clean_temporary` on resume.

Resume (``resume=true``): :func:`find_resume_point` picks the latest complete checkpoint and refuses a config whose
model, data, method or data-order keys changed since the run started (:data:`RESUME_KEYS`, unless
``resume_force=true``); :func:`prepare_resume` then removes leftovers and cuts ``metrics.jsonl`` back to the
checkpoint's step, so lines logged after the checkpoint by the killed process are neither lost nor duplicated (the
resumed run logs them again). Both are torch-free: the CLI calls the first in its pre-flight.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import ConfigError, RunDirError
from runner.outputs import probe_write

log = logging.getLogger(__name__)

_STEP = re.compile(r"^step-(\d+)$")
CHECKPOINTS = "checkpoints"
"""Name of the checkpoints dir inside a run dir."""


def step_dir(root: str | Path, step: int) -> Path:
    """``<root>/step-<step>``."""
    return Path(root) / f"step-{step}"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as (step, path), oldest first (temporary dirs are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest(root: str | Path) -> Path | None:
    """The most recent complete checkpoint, or None."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def prune(root: str | Path, keep_last_n: int | None) -> list[Path]:
    """Delete all but the ``keep_last_n`` most recent checkpoints (None keeps all); returns what was deleted."""
    if not keep_last_n or keep_last_n < 1:
        return []
    found = list_checkpoints(root)
    doomed = [p for _, p in found[:-keep_last_n]]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def clean_temporary(root: str | Path) -> list[Path]:
    """Remove leftovers of saves that were killed midway (``.tmp-step-*``, ``.old-step-*``); returns them."""
    root = Path(root)
    removed = []
    if root.is_dir():
        for p in sorted([*root.glob(".tmp-step-*"), *root.glob(".old-step-*")]):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary dir next to ``final``; rename it to ``final`` when the block completes.

    An existing ``final`` is replaced only after the new one is complete. On an exception (or a kill) the temporary
    dir is removed (or left hidden and ignored) and ``final`` is untouched.

    Raises:
        RunDirError: the disk is full or the dir is not writable.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        commit(tmp, final)
    except Exception as ex:
        reason = write_failure(ex, final.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        if reason is None:
            raise
        raise RunDirError(f"could not save checkpoint '{final}': {reason}. The previous checkpoints are intact; free "
                          "space (or choose another run dir) and continue with resume=true.") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def shared_tmp_dir(final: str | Path) -> Path:
    """The temporary dir every rank of a distributed save writes into (a fixed name, so all ranks agree on it
    without talking); :func:`commit` renames it to ``final`` once every rank is done."""
    final = Path(final)
    return final.parent / f".tmp-{final.name}-shared"


def commit(tmp: str | Path, final: str | Path) -> None:
    """fsync every file under ``tmp`` and rename it to ``final`` (an existing ``final`` is replaced only after the
    new one is complete).

    Raises:
        OSError: the rename or a sync failed (``final`` is untouched).
    """
    tmp, final = Path(tmp), Path(final)
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    if final.exists():
        old = final.with_name(f".old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


_WRITE_ERRORS = ("No space left on device", "Disk quota exceeded", "File too large", "Read-only file system",
                 "Permission denied", "Input/output error")


def write_failure(ex: BaseException, where: str | Path) -> str | None:
    """Why a write into ``where`` failed, when the cause is the filesystem (full, read-only, quota), else None.

    Writers do not all raise ``OSError``: ``torch.save`` raises ``RuntimeError`` (``unexpected pos``, ``iostream
    error``...) and safetensors its own error. For those, the message is searched for the OS's wording, and otherwise
    ``where`` is probed with a 64 KiB write (a healthy dir passes it, and the original error is re-raised).
    """
    if isinstance(ex, OSError):
        return ex.strerror or str(ex)
    text = str(ex)
    for known in _WRITE_ERRORS:
        if known.lower() in text.lower():
            return known
    try:
        probe_write(where, 65536)
    except OSError as probe_ex:
        return probe_ex.strerror or str(probe_ex)
    return None


# --------------------------------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------------------------------

RESUME_KEYS = ("model", "data", "method", "seed", "train.micro_batch_size", "train.grad_accum_steps",
               "train.max_seq_len", "train.batching", "world_size")
"""What a resumed run must share with the run that wrote the checkpoint: the model, the data, the method, and every
key that decides the data order and position (seed, batch shape, row filter, sampler, number of processes). Other keys
(``train.max_steps``, ``train.lr``, ``eval.*``, ``logger.*``, ``train.save_steps``...) may change on resume."""


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run resumes from."""

    step: int
    """Optimizer steps already taken (``N`` of ``step-N``); 0 when training starts over."""
    path: Path | None
    """The checkpoint dir; None when the recipe resumes without one (training starts over, reusing what the recipe
    cached or finished before, e.g. extracted features or earlier stages' artifacts)."""
    changes: tuple[str, ...] = ()
    """Config changes accepted with ``resume_force=true`` (empty otherwise)."""


def resume_fingerprint(cfg: Any) -> dict[str, Any]:
    """The values of :data:`RESUME_KEYS` in ``cfg`` (a DictConfig, or a dict read back from ``config.yaml``),
    flattened to dotted keys.

    Only these keys are resolved (the rest of the config may hold interpolations valid only inside Hydra). Values are
    redacted like ``config.yaml`` (credential values become ``***``), so a fingerprint of the live config compares
    equal to one read back from ``config.yaml``.
    """
    from omegaconf import DictConfig, ListConfig, OmegaConf

    from runner.outputs import redact

    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    out: dict[str, Any] = {}
    for key in RESUME_KEYS:
        if key == "world_size":
            dist = OmegaConf.select(cfg, "hardware.distributed", default="none")
            nproc = OmegaConf.select(cfg, "hardware.nproc_per_node", default=1)
            nnodes = OmegaConf.select(cfg, "hardware.nnodes", default=1)
            out[key] = 1 if dist == "none" else int(nproc) * int(nnodes)
            continue
        node = OmegaConf.select(cfg, key, default=None)
        if isinstance(node, (DictConfig, ListConfig)):
            node = OmegaConf.to_container(node, resolve=True)
        out.update(_flatten(key, redact(node)))
    return out


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(f"{prefix}.{k}", v))
        return out or {prefix: {}}
    return {prefix: value}


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every key of two fingerprints (:func:`resume_fingerprint`) that differs."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a != b:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


def check_resume_config(run_dir: str | Path, cfg: Any) -> tuple[str, ...]:
    """Compare ``cfg`` with ``<run_dir>/config.yaml`` (the config of the run being resumed) on :data:`RESUME_KEYS`.

    Returns:
        The changes accepted with ``resume_force=true`` (empty when nothing changed).

    Raises:
        RunDirError: the run dir holds no earlier run (no ``config.yaml`` and no ``checkpoints/``).
        ConfigError: a key of :data:`RESUME_KEYS` changed (each change named), or ``config.yaml`` is missing or
            unreadable, and ``resume_force`` is false.
    """
    run_dir = Path(run_dir)
    force = bool(cfg.get("resume_force", False))
    saved = run_dir / "config.yaml"
    if not saved.exists():
        if not (run_dir / CHECKPOINTS).exists():
            raise RunDirError(f"resume=true but '{run_dir}' holds no earlier run (no config.yaml, no checkpoints/); "
                              "there is nothing to resume. Point hydra.run.dir at the dir of the run to continue, or "
                              "start a new run without resume=true.")
        if not force:
            raise ConfigError(f"resume=true but '{saved}' is missing, so the config of the run that wrote the "
                              "checkpoints cannot be compared with this one; resume with resume_force=true if you are "
                              "sure the model and data are the same.")
        return ("config.yaml missing: not compared",)
    from omegaconf import OmegaConf

    try:
        old = OmegaConf.load(saved)
    except Exception as ex:  # a damaged config.yaml
        raise ConfigError(f"resume=true but '{saved}' cannot be read ({' '.join(str(ex).split())[:200]}); resume "
                          "with resume_force=true to skip the comparison.") from None
    changes = config_changes(resume_fingerprint(old), resume_fingerprint(cfg))
    if changes and not force:
        raise ConfigError(f"resume=true but the config changed since the run in '{run_dir}' started, and its "
                          f"checkpoints cannot continue under the new one: {'; '.join(changes)}. Change these back "
                          f"(resume compares {', '.join(RESUME_KEYS)}), start a new run in another dir, or accept "
                          "the change with resume_force=true.")
    return tuple(changes)


def find_resume_point(run_dir: str | Path, cfg: Any, root: str | Path | None = None) -> ResumePoint:
    """The latest complete checkpoint of the run in ``run_dir``, checked against ``cfg`` (no side effects).

    Args:
        run_dir: the run dir (``config.yaml`` holds the config of the run).
        cfg: the config of the resuming run (``cfg.resume_force`` accepts changes of :data:`RESUME_KEYS`).
        root: where the ``step-N`` dirs are (default ``<run_dir>/checkpoints``; a stage's own dir for recipes that
            train in stages).

    Raises:
        RunDirError: no complete checkpoint (leftovers of a killed save do not count).
        ConfigError: see :func:`check_resume_config`.
    """
    run_dir = Path(run_dir)
    changes = check_resume_config(run_dir, cfg)
    root = Path(root) if root is not None else run_dir / CHECKPOINTS
    found = list_checkpoints(root)
    if not found:
        half = sorted(p.name for p in root.glob(".tmp-step-*")) if root.is_dir() else []
        extra = f" (only the unfinished save(s) {', '.join(half)}, which never count)" if half else ""
        raise RunDirError(f"resume=true but '{root}' holds no complete checkpoint (step-N){extra}; there is nothing "
                          "to resume. Start a new run (without resume=true, in a fresh hydra.run.dir), and set "
                          "train.save_steps=N so that long runs leave checkpoints to resume from.")
    step, path = found[-1]
    return ResumePoint(step, path, changes)


def prepare_resume(run_dir: Any, point: ResumePoint) -> float:
    """Make the run dir consistent with ``point`` before training continues (rank 0 only writes).

    Removes leftovers of killed saves next to the checkpoint, and cuts from ``metrics.jsonl`` the lines the killed
    process logged after the checkpoint: down to the line count recorded in the checkpoint's ``runner_state.json``
    (exact, also for recipes that train in stages whose steps count from 1 again), then any trailing line whose step
    is above ``point.step`` or that the kill cut short. The resumed run logs those steps again.

    Args:
        run_dir: a :class:`runner.outputs.RunDir`.
        point: from :func:`find_resume_point` (or a recipe's ``resume_point()``).

    Returns:
        ``time_s`` of the last line kept (the resumed run's clock continues from it), 0.0 if none.
    """
    from runner.outputs import atomic_write_text

    if not run_dir.main:
        return 0.0
    root = point.path.parent if point.path is not None else Path(run_dir.path) / CHECKPOINTS
    for p in clean_temporary(root):
        log.info("removed %s, left by a save that was killed", p)
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0.0
    lines = path.read_text(encoding="utf-8").splitlines()
    keep = len(lines)
    state = point.path / "runner_state.json" if point.path is not None else None
    recorded = json.loads(state.read_text()).get("metrics_lines") if state and state.exists() else None
    if isinstance(recorded, int) and 0 <= recorded <= keep:
        keep = recorded  # the lines written when the checkpoint was saved: exact, whatever the stages
    while keep:
        try:
            row = json.loads(lines[keep - 1])
            after = int(row["step"]) > point.step
        except (ValueError, KeyError, TypeError):
            after = True  # a line cut short by the kill
        if not after:
            break
        keep -= 1
    last_time = 0.0
    for line in reversed(lines[:keep]):
        try:
            last_time = float(json.loads(line).get("time_s") or 0.0)
            break
        except (ValueError, TypeError, AttributeError):
            continue
    if keep < len(lines):
        atomic_write_text(path, "".join(x + "\n" for x in lines[:keep]))
        log.info("metrics.jsonl: dropped %d line(s) logged after step %d (they are logged again)",
                 len(lines) - keep, point.step)
    return last_time
