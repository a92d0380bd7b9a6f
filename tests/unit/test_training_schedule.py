"""The learning-rate schedule takes its base from the job, not from a resumed optimizer."""

from __future__ import annotations

import torch

from multimodal.training.schedule import LRSchedule, lr_factor


def test_resumed_optimizer_does_not_change_the_base_rate():
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([param], lr=3e-3)
    optimizer.param_groups[0]["lr"] = 1e-5  # what a checkpoint restores: the last, decayed rate
    schedule = LRSchedule(optimizer, 3e-3, total_steps=100, warmup_steps=10, min_ratio=0.1, budget_minutes=None)
    rate = schedule.set(50, 0.0)
    assert rate == optimizer.param_groups[0]["lr"] == 3e-3 * lr_factor(50, 100, 10, 0.1)
    assert rate > 1e-3


def test_warmup_then_cosine_to_the_floor():
    assert lr_factor(0, 100, 10, 0.1) == 0.1  # first warmup step
    assert lr_factor(10, 100, 10, 0.1) == 1.0
    assert abs(lr_factor(100, 100, 10, 0.1) - 0.1) < 1e-12
    assert abs(lr_factor(20, 100, 10, 0.1, time_fraction=1.0) - 0.1) < 1e-12  # time budget used up
