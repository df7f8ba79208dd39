"""The run dir: resolved config, plan, metrics, predictions, checkpoints and provenance.

Layout (DESIGN.md): ``config.yaml`` (resolved, no ``${...}``), ``plan.json``, ``metrics.json`` (final, flat keys),
``metrics.jsonl`` (one line per logged step), ``predictions.jsonl``, ``checkpoints/step-N/`` (safetensors),
``provenance.json`` (git sha, package versions, hardware, command line).

Only the main process (rank 0) writes. Files are written to a temporary name and renamed into place, so a crash never
leaves a half-written JSON behind, and a new run never overwrites another run's results.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from runner.errors import RunDirError

RESULT_FILES = ("config.yaml", "metrics.json", "metrics.jsonl", "predictions.jsonl", "provenance.json",
                "checkpoints")
"""What a run leaves behind; a new run refuses a dir that holds any of them (unless it resumes)."""

PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "accelerate", "peft", "trl", "deepspeed",
            "hydra-core", "omegaconf", "wandb", "math-verify", "sacrebleu", "numpy")

MIN_FREE_BYTES = 2**20
"""A run refuses a run dir on a device with less free space than this (1 MiB)."""

SECRET_MARKERS = ("TOKEN", "SECRET", "KEY", "PASSWORD")
"""Environment variables whose name contains one of these hold credentials; their values never reach any file."""


def is_main_process() -> bool:
    """True on rank 0 (or without a launcher)."""
    return int(os.environ.get("RANK", "0")) == 0


def secret_values() -> list[str]:
    """Values of the environment variables that look like credentials (``WANDB_API_KEY``, ``HF_TOKEN``...)."""
    return [v for k, v in os.environ.items() if any(m in k.upper() for m in SECRET_MARKERS) and len(v) >= 6]


def redact(obj: Any, secrets: list[str] | None = None) -> Any:
    """``obj`` with every occurrence of a secret value replaced by ``***`` (strings inside dicts and lists too)."""
    secrets = secret_values() if secrets is None else secrets
    if not secrets:
        return obj
    if isinstance(obj, str):
        for s in secrets:
            obj = obj.replace(s, "***")
        return obj
    if isinstance(obj, Mapping):
        return {k: redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, secrets) for v in obj]
    return obj


class SecretsFilter(logging.Filter):
    """A logging filter that replaces credential values (:func:`secret_values`) in every record by ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = secret_values()
        if secrets:
            message = record.getMessage()
            clean = redact(message, secrets)
            if clean != message:
                record.msg, record.args = clean, None
        return True


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            return str(value)
    return value


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same dir and an atomic rename.

    Raises:
        RunDirError: the dir is not writable or the disk is full (the previous content of ``path`` stays whole).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; results are as readable as any file the user writes
        os.replace(tmp, path)
    except OSError as ex:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise RunDirError(f"cannot write '{path}': {ex.strerror or ex}. Free space or choose another run dir "
                          "(hydra.run.dir=...).") from None



def probe_write(where: str | Path, nbytes: int) -> None:
    """Write ``nbytes`` into a hidden temporary file in ``where``, fsync it and remove it.

    Raises:
        OSError: the directory cannot take the write (full, read-only, quota, permissions).
    """
    fd, probe = tempfile.mkstemp(prefix=".probe.", dir=where)
    try:
        os.write(fd, b"\0" * nbytes)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(probe)

class RunDir:
    """The directory one run writes to (``run_dir``); rank 0 writes, other ranks only read.

    Args:
        path: the run dir (created if missing).
        main: whether this process writes (defaults to rank 0).
    """

    def __init__(self, path: str | Path, main: bool | None = None):
        self.path = Path(path)
        self.main = is_main_process() if main is None else main

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ---- checks --------------------------------------------------------------------------------------------------
    def existing_results(self) -> list[str]:
        """Result files of an earlier run present in the dir."""
        if not self.path.exists():
            return []
        return [name for name in RESULT_FILES if (self.path / name).exists()]

    def check_fresh(self, resume: bool) -> None:
        """Refuse to start a new run over another run's results (``resume=true`` continues it instead).

        Raises:
            RunDirError: the dir holds results and ``resume`` is false; or the dir cannot be written.
        """
        found = self.existing_results()
        if found and not resume:
            raise RunDirError(f"run dir '{self.path}' already holds a run's results ({', '.join(found)}); a new run "
                              "never overwrites them. Choose another dir (hydra.run.dir=...), or continue that run "
                              "with resume=true.")
        self.check_writable()

    def check_writable(self) -> None:
        """The dir can be created and written, and its device has at least :data:`MIN_FREE_BYTES` free.

        Raises:
            RunDirError: the path is a file, not writable (read-only filesystem, permissions), or the device is full.
        """
        if not self.main:
            return
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"run dir '{self.path}' is a file, not a directory; choose a dir with "
                              "hydra.run.dir=...")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe_write(self.path, 4096)
        except OSError as ex:
            if ex.errno in (errno.ENOSPC, errno.EDQUOT):
                raise RunDirError(f"the device holding run dir '{self.path}' is full ({ex.strerror}); free space or "
                                  "choose another dir with hydra.run.dir=...") from None
            raise RunDirError(f"run dir '{self.path}' is not writable ({ex.strerror or ex}); choose a writable dir "
                              "with hydra.run.dir=...") from None
        free = shutil.disk_usage(self.path).free
        if free < MIN_FREE_BYTES:
            raise RunDirError(f"the device holding run dir '{self.path}' has {free / 2**20:.2f} MiB free, less than "
                              f"the {MIN_FREE_BYTES / 2**20:.0f} MiB a run needs for its config, logs and metrics "
                              "(checkpoints need more: see the plan's memory figures); free space or choose another "
                              "dir with hydra.run.dir=...")

    def redact_hydra_files(self) -> None:
        """Replace credential values in the ``.hydra/*.yaml`` files Hydra wrote (they hold the command line)."""
        secrets = secret_values()
        hydra_dir = self.path / ".hydra"
        if not self.main or not secrets or not hydra_dir.is_dir():
            return
        for f in hydra_dir.glob("*.yaml"):
            text = f.read_text(encoding="utf-8")
            clean = redact(text, secrets)
            if clean != text:
                atomic_write_text(f, clean)

    # ---- writers -------------------------------------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> Path:
        path = self.path / name
        if self.main:
            atomic_write_text(path, json.dumps(redact(_clean(obj)), indent=2, ensure_ascii=False) + "\n")
        return path

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text(encoding="utf-8"))

    def append_jsonl(self, name: str, rows: Iterable[Mapping[str, Any]]) -> None:
        if not self.main:
            return
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "a", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(redact(_clean(dict(row))), ensure_ascii=False) + "\n")
        except OSError as ex:
            raise RunDirError(f"cannot append to '{path}': {ex.strerror or ex}.") from None

    def write_jsonl(self, name: str, rows: Iterable[Mapping[str, Any]]) -> Path:
        path = self.path / name
        if self.main:
            text = "".join(json.dumps(redact(_clean(dict(r))), ensure_ascii=False) + "\n" for r in rows)
            atomic_write_text(path, text)
        return path

    def write_config(self, cfg: Any) -> Path:
        """The resolved config as ``config.yaml`` (no interpolation left; credential values redacted)."""
        from omegaconf import OmegaConf

        container = OmegaConf.to_container(cfg, resolve=True)
        container.pop("hydra", None)
        path = self.path / "config.yaml"
        if self.main:
            atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(redact(container))))
        return path

    def write_metrics(self, metrics: Mapping[str, Any]) -> Path:
        """Final metrics as flat keys in ``metrics.json`` (merged with metrics already there)."""
        existing = {}
        if (self.path / "metrics.json").exists():
            existing = self.read_json("metrics.json")
        existing.update({k: _jsonable(v) for k, v in metrics.items()})
        return self.write_json("metrics.json", existing)

    def write_provenance(self, argv: list[str] | None = None, extra: Mapping[str, Any] | None = None) -> Path:
        data = provenance(argv)
        if extra:
            data.update(extra)
        return self.write_json("provenance.json", data)


def _clean(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return _jsonable(obj)


def git_sha(cwd: str | Path | None = None) -> str | None:
    """The commit of the runner's source tree (with ``-dirty`` when it has uncommitted changes), if it is a repo."""
    root = cwd or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def hardware_info() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": sys.version.split()[0],
                            "cpu_count": os.cpu_count(), "hostname": platform.node()}
    if "torch" in sys.modules:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    return info


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """Git sha, package versions, hardware and the command line of this process."""
    return {"git_sha": git_sha(), "packages": package_versions(), "hardware": hardware_info(),
            "argv": list(sys.argv if argv is None else argv), "cwd": os.getcwd()}
