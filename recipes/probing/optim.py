"""Training small heads (probes, pair encoders, reward heads, margin heads) on cached features.

The backbone is frozen, so a head sees fixed feature rows: each optimizer step takes one shuffled batch of
``train.micro_batch_size x train.grad_accum_steps`` rows (the mean loss over that batch is what accumulating equal
micro-batches computes), with AdamW (``torch.optim.AdamW``: decoupled weight decay, as DeepSpeed's FusedAdam in
MRMBench's scripts) and the scheduler from ``transformers.get_scheduler``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class HeadOptim:
    """Optimizer settings of a head (mapped from ``train.*``)."""

    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    batch_size: int = 128
    """Rows per optimizer step."""
    epochs: float = 1.0
    max_steps: int = -1
    """Positive: exactly this many steps; -1: ``ceil(epochs x ceil(rows / batch_size))``."""
    scheduler: str = "cosine"
    warmup_ratio: float = 0.0
    max_grad_norm: float = 0.0
    """Gradient clipping norm; 0 disables it (MRMBench's probes are not clipped)."""
    seed: int = 0

    @classmethod
    def from_cfg(cls, cfg: Any, seed_offset: int = 0) -> HeadOptim:
        """Settings from ``train.*`` and ``seed`` (``seed_offset`` separates the heads of one run)."""
        from runner.config import global_batch_size

        t = cfg.train
        return cls(lr=float(t.lr), betas=(float(t.adam_beta1), float(t.adam_beta2)),
                   weight_decay=float(t.weight_decay), batch_size=global_batch_size(cfg), epochs=float(t.epochs),
                   max_steps=int(t.max_steps), scheduler=str(t.lr_scheduler), warmup_ratio=float(t.warmup_ratio),
                   max_grad_norm=float(t.max_grad_norm), seed=int(cfg.seed) + seed_offset)

    def steps(self, rows: int) -> int:
        """Optimizer steps over ``rows`` training rows."""
        if self.max_steps >= 0:
            return self.max_steps
        if rows == 0:
            return 0
        return math.ceil(self.epochs * math.ceil(rows / self.batch_size))


def fit(module: Any, rows: int, batch_loss: Callable[[Any], Any], opt: HeadOptim,
        on_step: Callable[[int, float, float], None] | None = None) -> list[float]:
    """Train ``module``'s trainable parameters for ``opt.steps(rows)`` steps.

    Args:
        module: the head (``torch.nn.Module``); it is put in train mode and left in eval mode.
        rows: number of training rows; batches are index tensors into them, reshuffled every epoch (seeded).
        batch_loss: maps a ``(b,)`` long tensor of row indices to the scalar loss of that batch.
        opt: optimizer settings.
        on_step: called as ``on_step(step, loss, lr)`` after each optimizer step (1-based).

    Returns:
        The loss of every step.
    """
    import torch
    from transformers import get_scheduler

    steps = opt.steps(rows)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay)
    name = opt.scheduler
    warmup = math.ceil(opt.warmup_ratio * steps)
    if name == "constant" and warmup:
        name = "constant_with_warmup"
    scheduler = get_scheduler(name, optimizer=optimizer, num_warmup_steps=warmup, num_training_steps=max(steps, 1))
    gen = torch.Generator().manual_seed(opt.seed)
    losses: list[float] = []
    module.train()
    order = torch.randperm(rows, generator=gen)
    cursor = 0
    for step in range(1, steps + 1):
        if cursor >= rows:
            order, cursor = torch.randperm(rows, generator=gen), 0
        idx = order[cursor:cursor + opt.batch_size]
        cursor += opt.batch_size
        loss = batch_loss(idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if opt.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, opt.max_grad_norm)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1], lr)
    module.eval()
    return losses
