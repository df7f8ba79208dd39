"""Checkpoints in the run dir: ``checkpoints/step-N/``, written atomically, listed, pruned.

A checkpoint is written into a hidden temporary dir (``checkpoints/.tmp-step-N-*``) and renamed into place only when
it is complete, so a kill during a save leaves the previous checkpoints whole and never a half-written ``step-N``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from runner.errors import RunDirError

_STEP = re.compile(r"^step-(\d+)$")


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


def clean_temporary(root: str | Path) -> None:
    """Remove leftovers of saves that were killed midway."""
    root = Path(root)
    if root.is_dir():
        for p in root.glob(".tmp-step-*"):
            shutil.rmtree(p, ignore_errors=True)


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
    except OSError as ex:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunDirError(f"could not save checkpoint '{final}': {ex.strerror or ex}. The previous checkpoints are "
                          "intact; free space or choose another run dir.") from None
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
