"""One optimizer step: ``grad_accum_steps`` micro-batches (forward, backward), clip, step.

A batch can have zero rows (every row undecodable): data-parallel workers must still take the
same steps, so such a batch is replaced by the previous one (or a one-token placeholder) with its
loss multiplied by zero.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch

from multimodal.batch import BOS_ID, EOS_ID, empty_batch
from multimodal.config import MediaSpec
from multimodal.training.schedule import LRSchedule


def placeholder_batch(spec: MediaSpec, device: torch.device) -> dict[str, torch.Tensor]:
    """One text-only ``<bos> <eos>`` sample: a finite loss to multiply by zero."""
    batch = {k: torch.from_numpy(v).to(device) for k, v in empty_batch(spec, 1).items()}
    batch["input_ids"][0, :2] = torch.tensor([BOS_ID, EOS_ID])
    batch["attention_mask"][0, :2] = 1
    batch["labels"][0, 1] = EOS_ID
    return batch


def text_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Positions the loss is taken on."""
    return int((batch["labels"][:, 1:] != -100).sum().item())


def autocast(device: torch.device):
    """bf16 autocast on CUDA, nothing elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


class TrainStep:
    """Accumulates micro-batches and takes the optimizer step."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 compute_loss: Callable, schedule: LRSchedule, spec: MediaSpec, device: torch.device,
                 grad_accum_steps: int = 1, grad_clip: float = 1.0):
        self.model, self.optimizer, self.compute_loss, self.schedule = model, optimizer, compute_loss, schedule
        self.spec, self.device = spec, device
        self.grad_accum_steps, self.grad_clip = grad_accum_steps, grad_clip
        self.accumulated = 0
        self.last_batch: dict[str, torch.Tensor] | None = None
        self.loss = float("nan")  # the last micro-batch's loss
        self.ddp = hasattr(model, "no_sync")

    def micro_step(self, batch: dict[str, torch.Tensor]) -> tuple[int, bool]:
        """Forward and backward one micro-batch; ``(text tokens trained, step is due)``."""
        scale = 1.0
        if batch["input_ids"].shape[0] == 0:  # every row was undecodable: keep DDP in step
            batch, scale = (self.last_batch if self.last_batch is not None
                            else placeholder_batch(self.spec, self.device)), 0.0
        self.last_batch = batch
        self.accumulated += 1
        due = self.accumulated == self.grad_accum_steps
        sync = nullcontext() if (due or not self.ddp) else self.model.no_sync()
        with sync:
            with autocast(self.device):
                loss = self.compute_loss(self.model, batch)
            (loss * scale / self.grad_accum_steps).backward()
        self.loss = float(loss.detach())
        return (text_tokens(batch) if scale else 0), due

    def optimizer_step(self, step: int, elapsed_seconds: float) -> float:
        """Set the rate for ``step``, clip, step, clear the gradients; returns the rate."""
        self.accumulated = 0
        lr = self.schedule.set(step, elapsed_seconds)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lr
