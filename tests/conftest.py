"""Shared fixtures: Hydra Compose API configs, a shared tiny-model cache, paths to ../shared/data, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("RUNNER_SHARED_DATA", REPO.parent / "shared" / "data"))
"""Real public data for tests: ``../shared/data`` next to the repo (or ``$RUNNER_SHARED_DATA``)."""
RUN = str(Path(sys.executable).parent / "run")

# One cache of built tiny models for the whole session (and all xdist workers): builds are atomic renames.
os.environ.setdefault("RUNNER_CACHE", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"runner-test-cache-{os.getuid()}"))
os.environ.setdefault("RUNNER_PROGRESS", "0")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# pytest-xdist runs 2 workers on 2 cores: one torch thread per process (workers and the `run` subprocesses they
# start) avoids oversubscription, which made tiny-model tests 10-30x slower under load.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test runs with one torch thread (restored after): in-process runs may set ``hardware.num_threads``, and
    two threads per xdist worker on 2 cores made a tiny model's step ~10x slower. torch is imported only if the test
    already did."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def shared(*parts: str) -> Path:
    """A path under ../shared/data (skips the test when the shared data is not there)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data {path} not available")
    return path


@pytest.fixture
def compose_cfg(tmp_path):
    """``compose_cfg(*overrides)`` -> a composed config with run_dir in tmp_path."""
    from runner.config import compose

    def _compose(*overrides: str):
        return compose([f"run_dir={tmp_path / 'run'}", *overrides])

    return _compose


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None):
    """Run the ``run`` console script as a user would; returns the CompletedProcess (text).

    ``env`` adds variables; a value of None removes that variable.
    """
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}  # env={"X": None} removes X
    return subprocess.run([RUN, *args], cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout,
                          env=full_env)


TINY = {
    "llama": dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=False),
    "qwen2": dict(model_type="qwen2", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True),
}
"""The METHODS.md test architecture: 8 layers, hidden 64, intermediate 128."""


def tiny_model(kind: str, seed: int = 0):
    """A random-init tiny causal LM of :data:`TINY` (fp32, CPU)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = dict(TINY[kind])
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)
