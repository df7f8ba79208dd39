"""Hardware: device checks, precision, CPU threads, and the memory estimate of a plan.

The memory estimate counts model states only (weights, gradients, AdamW states), per process, as in the ZeRO paper's
accounting (Rajbhandari et al. 2020, Sec. 3): with mixed precision, weights and gradients in 2 bytes and the
optimizer holding an fp32 master copy plus two fp32 moments (12 bytes per trainable parameter); in fp32, 4 + 4 + 8.
Activations depend on batch and sequence length and are not included.
"""

from __future__ import annotations

import os
from typing import Any

from runner.errors import HardwareError

GiB = 1024**3


def resolve_precision(hw: Any) -> str:
    """``fp32``/``bf16``/``fp16``: ``auto`` is bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU."""
    if hw.precision != "auto":
        return hw.precision
    if hw.device != "cuda":
        return "fp32"
    import torch

    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp16"


def setup(hw: Any) -> str:
    """Check the device is there and configure threads; returns the resolved precision.

    Raises:
        HardwareError: ``hardware.device=cuda`` but no GPU is visible; fp16/bf16 asked for on CPU.
    """
    if hw.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch

    if hw.device == "cuda" and not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        extra = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        raise HardwareError(f"hardware={hw.name} asks for a GPU (hardware.device=cuda) but torch sees none{extra}; "
                            f"torch {torch.__version__} {'has' if torch.version.cuda else 'has no'} CUDA support. "
                            "Run with hardware=cpu, or install a CUDA build of torch (make install TORCH=...).")
    if hw.device == "cpu" and hw.precision in ("bf16", "fp16"):
        raise HardwareError(f"'hardware.precision' is {hw.precision} on the CPU; use fp32 (or hardware=gpu).")
    if hw.num_threads:
        torch.set_num_threads(int(hw.num_threads))
    return resolve_precision(hw)


def bytes_per_param(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def estimate_memory(total_params: int, trainable_params: int, precision: str, training: bool = True) -> dict[str, float]:
    """Model-state memory of one process without sharding, in GiB.

    Args:
        total_params: parameters held by the model.
        trainable_params: parameters with gradients and optimizer states.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        training: False counts weights only (inference).

    Returns:
        ``{"weights_gb", "gradients_gb", "optimizer_gb", "total_gb"}``; the optimizer is AdamW (two moments, plus an
        fp32 master copy of the trainable weights under mixed precision).
    """
    w = bytes_per_param(precision)
    weights = total_params * w
    grads = trainable_params * w if training else 0
    optim = trainable_params * (8 if precision == "fp32" else 12) if training else 0
    out = {"weights_gb": weights / GiB, "gradients_gb": grads / GiB, "optimizer_gb": optim / GiB}
    out["total_gb"] = sum(out.values())
    return {k: round(v, 3) for k, v in out.items()}
