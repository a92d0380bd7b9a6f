"""The learning-rate schedule: linear warmup, then cosine decay (by steps or by the time budget)."""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float,
              time_fraction: float = 0.0) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay to ``min_ratio``.

    Cosine progress is the larger of the steps done and ``time_fraction`` (time used of a time
    budget), so a run stopped by its time budget still ends on a decayed learning rate.
    """
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = max((step - warmup_steps) / max(1, total_steps - warmup_steps), time_fraction)
    progress = min(1.0, max(0.0, progress))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class LRSchedule:
    """Sets every parameter group's rate to the configured ``base_lr`` times ``lr_factor``.

    The base is the job's setting, never read back from the optimizer: a resumed optimizer holds
    the rate of its last step (already decayed), and a resubmission may change the setting."""

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, total_steps: int,
                 warmup_steps: int, min_ratio: float, budget_minutes: float | None):
        self.optimizer = optimizer
        self.base_lrs = [base_lr for _ in optimizer.param_groups]
        self.total_steps, self.warmup_steps, self.min_ratio = total_steps, warmup_steps, min_ratio
        self.budget_seconds = 60 * budget_minutes if budget_minutes else None

    def set(self, step: int, elapsed_seconds: float) -> float:
        """The rate for ``step`` (``elapsed`` is averaged over workers, so every rank agrees)."""
        fraction = elapsed_seconds / self.budget_seconds if self.budget_seconds else 0.0
        factor = lr_factor(step, self.total_steps, self.warmup_steps, self.min_ratio, fraction)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        return self.base_lrs[0] * factor
