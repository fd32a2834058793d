"""Learning-rate schedule: linear warmup then cosine decay to ``min_lr`` (nanoGPT style).

    lr = get_lr(step, total_steps, warmup_steps, base_lr, min_lr)

``step`` counts optimizer steps from 0. The trainer converts ``training.warmup_epochs`` to
optimizer steps (``warmup_epochs * steps_per_epoch``) and applies the value to every param group
before each optimizer step. A pure function: no state, nothing to checkpoint but the step counter.
"""
from __future__ import annotations

import math

__all__ = ["get_lr"]


def get_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float) -> float:
    """Linear warmup from ``base_lr/warmup_steps`` to ``base_lr`` over ``warmup_steps`` steps, then
    cosine from ``base_lr`` (at ``step == warmup_steps``) to ``min_lr`` (at ``step == total_steps - 1``);
    ``min_lr`` after that."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if min_lr > base_lr:
        raise ValueError(f"min_lr ({min_lr}) must not exceed base_lr ({base_lr})")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    last = total_steps - 1
    if step >= last:
        return min_lr
    ratio = (step - warmup_steps) / (last - warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return min_lr + coeff * (base_lr - min_lr)
