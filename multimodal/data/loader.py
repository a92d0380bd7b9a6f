"""Training batches from a Ray ``DataIterator``: invalid rows dropped, per-batch statistics.

``iter_training_batches(it, batch_size, spec)`` wraps ``it.iter_torch_batches`` (``it`` comes from
``ray.train.get_dataset_shard``, ``dataset.iterator()`` or ``dataset.streaming_split``) over the
pipeline's wire rows (``data/wire.py``) and yields ``(batch, stats)``: ``batch`` holds exactly the
keys of ``multimodal/batch.py`` as dense torch tensors on the device, pixels normalised there
(rows with ``sample_valid == False`` removed, so a batch can be smaller than ``batch_size``), and
``stats`` is a ``BatchStats`` for the rows that came out of the pipeline for this batch (dropped
ones included). Every pipeline batch yields exactly one training batch, so data-parallel workers
that read the same number of rows take the same number of steps; when every row of a batch is
dropped, that batch has **zero rows** (check ``batch["input_ids"].shape[0]`` before a forward pass).

The per-batch work is two public steps, so a loop without Ray can run exactly the same code
(``jobs/bench_data.py``'s baseline does): ``training_collate(spec)`` (Arrow wire batch → CPU
tensors; Ray runs it in its prefetch threads) and ``model_batch`` (on the device: drop invalid
rows, fill modalities no row has with zeros, normalise pixels).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from multimodal.batch import MODALITIES, TEXT_KEYS, present_key
from multimodal.data.wire import WireCollate, fill_absent_, normalise_pixels_

if TYPE_CHECKING:  # pragma: no cover
    from multimodal.config import MediaSpec

CONTRACT_KEYS: tuple[str, ...] = (*TEXT_KEYS, *MODALITIES, *(present_key(m) for m in MODALITIES))
# pipeline columns that only feed BatchStats
STATS_KEYS: tuple[str, ...] = ("sample_valid", "shard_id", *(f"bad_{m}" for m in MODALITIES))


@dataclass
class BatchStats:
    """Counts for one batch (or, summed with ``merge``, for an epoch)."""

    rows: int = 0  # rows read from the pipeline (valid + dropped)
    valid: int = 0  # rows yielded
    dropped: int = 0  # rows with sample_valid False
    samples: dict[str, int] = field(default_factory=lambda: {m: 0 for m in ("text", *MODALITIES)})
    bad: dict[str, int] = field(default_factory=lambda: {m: 0 for m in MODALITIES})
    rows_per_shard: dict[int, int] = field(default_factory=dict)  # all rows, dropped included
    wait_s: float = 0.0  # seconds spent waiting for data

    def merge(self, other: "BatchStats") -> "BatchStats":
        self.rows += other.rows
        self.valid += other.valid
        self.dropped += other.dropped
        for key, value in other.samples.items():
            self.samples[key] = self.samples.get(key, 0) + value
        for key, value in other.bad.items():
            self.bad[key] = self.bad.get(key, 0) + value
        for key, value in other.rows_per_shard.items():
            self.rows_per_shard[key] = self.rows_per_shard.get(key, 0) + value
        self.wait_s += other.wait_s
        return self


def _to_numpy(value):
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def batch_stats(batch: dict, wait_s: float = 0.0) -> tuple[BatchStats, np.ndarray]:
    """Stats of one pipeline batch (numpy or torch) and its ``sample_valid`` mask."""
    valid = _to_numpy(batch["sample_valid"]).astype(bool) if "sample_valid" in batch else None
    n = int(_to_numpy(batch["input_ids"]).shape[0])
    if valid is None:
        valid = np.ones(n, bool)
    stats = BatchStats(rows=n, valid=int(valid.sum()), dropped=int(n - valid.sum()), wait_s=wait_s)
    mask = _to_numpy(batch["attention_mask"])
    labels = _to_numpy(batch["labels"])
    has_text = ((labels >= 0) & (mask > 0)).sum(axis=1) > 1  # more than the closing <eos>
    stats.samples["text"] = int((has_text & valid).sum())
    for modality in MODALITIES:
        stats.samples[modality] = int((_to_numpy(batch[present_key(modality)]).astype(bool) & valid).sum())
        key = f"bad_{modality}"
        if key in batch:
            stats.bad[modality] = int(_to_numpy(batch[key]).astype(bool).sum())
    if "shard_id" in batch:
        ids, counts = np.unique(_to_numpy(batch["shard_id"]), return_counts=True)
        stats.rows_per_shard = {int(i): int(c) for i, c in zip(ids, counts)}
    return stats, valid


def _batch_keys(keep_ids: bool) -> tuple[str, ...]:
    """The keys of a training batch: the contract, plus ``sample_id``/``shard_id`` when ``keep_ids``."""
    return CONTRACT_KEYS + (("sample_id", "shard_id") if keep_ids else ())


def training_collate(spec: "MediaSpec", keep_ids: bool = False):
    """The ``WireCollate`` that ``iter_training_batches`` gives Ray: the batch keys plus the
    stats columns."""
    keys = _batch_keys(keep_ids)
    return WireCollate(spec, keys + tuple(k for k in STATS_KEYS if k not in keys))


def model_batch(collated: dict, spec: "MediaSpec", keep_ids: bool = False, wait_s: float = 0.0
                ) -> tuple[dict, BatchStats]:
    """A collated wire batch (``training_collate``'s output, on its device) → ``(batch, stats)``:
    invalid rows dropped, absent modalities filled with zeros, pixels normalised."""
    import torch

    keys = _batch_keys(keep_ids)
    stats, valid = batch_stats(collated, wait_s)
    if valid.all():
        out = {k: collated[k] for k in keys if k in collated}
    else:  # possibly zero rows: still one batch, so every worker takes the same steps
        index = torch.from_numpy(np.flatnonzero(valid)).to(collated["input_ids"].device)
        out = {k: collated[k].index_select(0, index) for k in keys if k in collated}
    fill_absent_(out, spec)
    return normalise_pixels_(out), stats


def iter_training_batches(data_iterator, batch_size: int, spec: "MediaSpec", device=None,
                          drop_last: bool = False, *, prefetch_batches: int = 1, keep_ids: bool = False
                          ) -> Iterator[tuple[dict, BatchStats]]:
    """``(batch, stats)`` pairs from a Ray ``DataIterator`` of wire rows (see the module docstring).

    ``spec``: the ``MediaSpec`` the rows were decoded with. ``device``: torch device for the
    tensors (default: Ray's ``"auto"``, i.e. the Train worker's device, CPU outside Train).
    ``keep_ids=True`` also keeps ``sample_id`` and ``shard_id``.
    """
    kwargs = {"batch_size": batch_size, "drop_last": drop_last, "prefetch_batches": prefetch_batches,
              "device": device if device is not None else "auto",
              "collate_fn": training_collate(spec, keep_ids)}
    source = iter(data_iterator.iter_torch_batches(**kwargs))
    while True:
        started = time.perf_counter()
        try:
            batch = next(source)
        except StopIteration:
            break
        yield model_batch(batch, spec, keep_ids, time.perf_counter() - started)


_END = object()  # an epoch's last batch has been read


class EpochBatches:
    """``(batch, stats)`` pairs of consecutive epochs, read ahead by one background thread.

    Every epoch of a Ray ``DataIterator`` starts the pipeline again (``streaming_split`` executes
    the plan anew: read tasks or decode actors, first blocks), which the trainer waited for at
    each epoch start. Here a thread reads epoch ``e + 1`` as soon as epoch ``e``'s last batch is
    read, so that start-up overlaps the training of ``e``'s last ``ahead`` batches. The thread
    starts at construction (build this before the model, so epoch 0's start-up overlaps the
    model's setup too). ``iterator_for(epoch)``: the ``DataIterator`` of that epoch (called in the
    thread); ``device``: where the batches go (concrete: the thread cannot resolve Ray's
    ``"auto"``); at most ``ahead`` batches wait in memory. A pipeline error is raised from
    ``epoch()`` in the consuming thread. Used like ``iter_training_batches``, one epoch at a time::

        batches = EpochBatches(lambda e: shard, range(first, last), batch_size, spec, device)
        for epoch in range(first, last):
            for batch, stats in batches.epoch(epoch): ...
        batches.close()
    """

    def __init__(self, iterator_for: Callable[[int], object], epochs: range, batch_size: int,
                 spec: "MediaSpec", device="cpu", *, ahead: int = 16, keep_ids: bool = False,
                 drop_last: bool = False, prefetch_batches: int = 1):
        self.spec, self.keep_ids, self.epochs = spec, keep_ids, epochs
        self._kwargs = {"batch_size": batch_size, "drop_last": drop_last, "prefetch_batches": prefetch_batches,
                        "device": device, "collate_fn": training_collate(spec, keep_ids)}
        self._iterator_for = iterator_for
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="epoch-batches", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        try:
            for epoch in self.epochs:
                for batch in self._iterator_for(epoch).iter_torch_batches(**self._kwargs):
                    if not self._put((epoch, batch)):
                        return
                if not self._put((epoch, _END)):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put((None, exc))

    def epoch(self, epoch: int) -> Iterator[tuple[dict, BatchStats]]:
        """This epoch's batches; ``stats.wait_s`` is the time the caller waited for each."""
        if epoch not in self.epochs:
            raise ValueError(f"epoch {epoch} is outside {self.epochs}")
        while True:
            started = time.perf_counter()
            got, item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            if got < epoch:  # an earlier epoch the caller left before its end
                continue
            if item is _END:
                return
            yield model_batch(item, self.spec, self.keep_ids, time.perf_counter() - started)

    def close(self) -> None:
        """Stop reading ahead (the thread ends at its next batch)."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break

    def __enter__(self) -> "EpochBatches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["BatchStats", "EpochBatches", "iter_training_batches", "training_collate", "model_batch", "batch_stats",
           "CONTRACT_KEYS"]
