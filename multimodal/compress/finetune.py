"""A short in-process fine-tune (no Ray): recovery after pruning or sharing, the early-exit
loss, or distillation from a teacher, on batches already decoded in memory.

The Ray Train job does the same at scale (``--teacher``, ``--early-exit-loss``); this is for
``jobs/bench_edge.py`` and for quick recoveries right after ``slm-compress``.
"""

from __future__ import annotations

import math
import random
import sys
import time
from typing import Sequence

import torch
from torch import nn

from multimodal.compress.distill import distillation_loss
from multimodal.compress.early_exit import early_exit_loss


def finetune(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]], steps: int,
             lr: float = 3e-3, teacher: nn.Module | None = None, alpha: float = 0.5,
             temperature: float = 2.0, exit_weight: float = 0.0, warmup: int = 20, seed: int = 0,
             log_every: int = 0, teacher_cache: dict[int, torch.Tensor] | None = None
             ) -> list[float]:
    """Train ``model`` in place for ``steps`` AdamW steps over ``batches`` (cycled in a shuffled
    order, cosine schedule after ``warmup``); returns the loss of every step.

    ``teacher_cache`` (batch index -> teacher logits) keeps the frozen teacher's logits of each
    batch after their first use, also across calls that pass the same dict and batches."""
    generator = random.Random(seed)
    optimizer = model.configure_optimizer(lr=lr, weight_decay=0.01)
    model.train()
    if teacher is not None:
        teacher.eval()
    losses: list[float] = []
    order: list[int] = []
    started = time.monotonic()
    for step in range(steps):
        if not order:
            order = list(range(len(batches)))
            generator.shuffle(order)
        order_index = order.pop()
        batch = batches[order_index]
        factor = (step + 1) / warmup if step < warmup else \
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))
        for group in optimizer.param_groups:
            group["lr"] = lr * factor
        if exit_weight:
            loss, output = early_exit_loss(model, batch, exit_weight)
        else:
            output = model(batch)
            loss = output.loss
        if teacher is not None:
            index = order_index
            teacher_logits = teacher_cache.get(index) if teacher_cache is not None else None
            if teacher_logits is None:
                with torch.no_grad():
                    teacher_logits = teacher(batch).logits
                if teacher_cache is not None:
                    teacher_cache[index] = teacher_logits
            loss = distillation_loss(output.logits, teacher_logits, batch["labels"], alpha,
                                     temperature, loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            print(f"  step {step + 1}/{steps} loss {losses[-1]:.4f} "
                  f"({time.monotonic() - started:.0f}s)", file=sys.stderr, flush=True)
    model.eval()
    return losses
