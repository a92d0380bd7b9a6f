"""Where in the data the loop is: which dataset each epoch reads, and what a resume skipped.

The first epoch of every attempt reads ``TRAIN_RESUME``: the runtime builds it from the shards
the latest checkpoint had not finished (all shards on a fresh start); later epochs read ``TRAIN``.
The rows read per shard are counted in ``TrainerState.position`` (``counts.Counts.add_to``), which
every checkpoint stores.
"""

from __future__ import annotations

from typing import Any

from multimodal.checkpoint import DataPosition, TrainerState

TRAIN, TRAIN_RESUME, VAL = "train", "train_resume", "val"


class DataCursor:
    """The data position of one attempt."""

    def __init__(self, state: TrainerState, resumed: DataPosition | None, shard_rows: list[int]):
        self.first_epoch = state.epoch
        self.resumed, self.shard_rows = resumed, shard_rows
        self.read_after_resume: set[int] = set()

    def dataset_for(self, epoch: int) -> str:
        """The name of the dataset ``epoch`` reads."""
        return TRAIN_RESUME if epoch == self.first_epoch else TRAIN

    def start_epoch(self, state: TrainerState, epoch: int) -> str:
        """Set ``state`` to ``epoch`` and return the name of the dataset to read in it."""
        state.epoch = epoch
        if epoch != self.first_epoch or self.resumed is None:
            state.position = DataPosition(epoch=epoch)
        return self.dataset_for(epoch)

    def note_rows(self, epoch: int, rows_per_shard: dict[int, int]) -> None:
        """Remember which shards the resumed epoch read (summed over workers)."""
        if self.resumed is not None and epoch == self.resumed.epoch:
            self.read_after_resume.update(shard for shard, rows in rows_per_shard.items() if rows)

    @staticmethod
    def end_epoch(state: TrainerState, epoch: int) -> None:
        """The epoch is complete: the next one reads every shard again."""
        state.position = DataPosition(epoch=epoch + 1)
        state.epoch = epoch + 1

    def report(self) -> dict[str, Any] | None:
        """For the result: the resumed epoch's shards read before and after the resume."""
        if self.resumed is None:
            return None
        return {"epoch": self.resumed.epoch,
                "fully_read_at_checkpoint": [i for i, n in enumerate(self.shard_rows)
                                             if self.resumed.rows_per_shard.get(i, 0) >= n],
                "read_after_resume": sorted(self.read_after_resume)}
