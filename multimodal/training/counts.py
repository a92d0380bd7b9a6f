"""What the workers read: one ``Counts`` record per worker, summed over workers by name.

A worker adds every batch's ``BatchStats`` (and the text tokens it trained on) to its ``Counts``;
at each checkpoint and epoch end the workers' records are gathered, summed with ``+`` and added to
the ``TrainerState`` totals (``Counts.add_to``), which is what a checkpoint stores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from multimodal.checkpoint import TrainerState
from multimodal.data.loader import BatchStats


def _add(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) + b.get(k, 0) for k in {*a, *b}}


@dataclass
class Counts:
    """Rows, samples, bad media, dropped rows, text tokens and data wait since the last sync."""

    rows_per_shard: dict[int, int] = field(default_factory=dict)  # dropped rows included
    samples: dict[str, int] = field(default_factory=dict)  # by modality, "text" included
    bad: dict[str, int] = field(default_factory=dict)  # undecodable media, by modality
    dropped: int = 0
    tokens: int = 0
    wait_s: float = 0.0  # seconds spent waiting for batches
    workers: int = 1  # how many workers' records were summed into this one

    def add_batch(self, stats: BatchStats, tokens: int) -> None:
        self.rows_per_shard = _add(self.rows_per_shard, stats.rows_per_shard)
        self.samples = _add(self.samples, stats.samples)
        self.bad = _add(self.bad, stats.bad)
        self.dropped += stats.dropped
        self.tokens += tokens
        self.wait_s += stats.wait_s

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(_add(self.rows_per_shard, other.rows_per_shard), _add(self.samples, other.samples),
                      _add(self.bad, other.bad), self.dropped + other.dropped, self.tokens + other.tokens,
                      self.wait_s + other.wait_s, self.workers + other.workers)

    def add_to(self, state: TrainerState, num_shards: int) -> None:
        """Add these (summed) counts to the run's totals; the wait is the workers' mean."""
        state.samples_by_modality = _add(state.samples_by_modality, self.samples)
        state.bad_samples_by_modality = _add(state.bad_samples_by_modality, self.bad)
        state.dropped_samples += self.dropped
        state.tokens_seen += self.tokens
        state.data_wait_seconds += self.wait_s / max(1, self.workers)
        rows = state.position.rows_per_shard
        for shard, count in self.rows_per_shard.items():
            if 0 <= shard < num_shards and count:
                rows[shard] = rows.get(shard, 0) + count


class Collectives:
    """The few collectives the loop needs; no-ops in a single process."""

    def __init__(self, device: torch.device):
        self.device = device
        self.active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def sum(self, values: list[float]) -> list[float]:
        if not self.active:
            return [float(v) for v in values]
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def gather(self, value: Any) -> list[Any]:
        """Every worker's ``value`` (any picklable object), in rank order."""
        if not self.active:
            return [value]
        values: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(values, value)
        return values

    def sum_counts(self, counts: Counts) -> Counts:
        """Every worker's ``counts``, summed."""
        gathered = self.gather(counts)
        total = gathered[0]
        for other in gathered[1:]:
            total = total + other
        return total
