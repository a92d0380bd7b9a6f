"""Validation: the mean next-token loss over every worker's share of the validation set."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from multimodal.training.counts import Collectives
from multimodal.training.step import autocast, text_tokens


def validation_loss(model: torch.nn.Module, batches: Iterable, comm: Collectives,
                    device: torch.device) -> float | None:
    """Token-weighted mean loss of ``batches`` (``(batch, stats)`` pairs), summed over workers;
    ``None`` when there were no tokens. Leaves the model in training mode."""
    model.eval()
    loss_sum, token_sum = 0.0, 0
    with torch.no_grad():
        for batch, _ in batches:
            if batch["input_ids"].shape[0] == 0:
                continue
            with autocast(device):
                loss = model(batch).loss
            tokens = text_tokens(batch)
            loss_sum += float(loss) * tokens
            token_sum += tokens
    model.train()
    loss_sum, token_sum = comm.sum([loss_sum, token_sum])
    return loss_sum / token_sum if token_sum else None
