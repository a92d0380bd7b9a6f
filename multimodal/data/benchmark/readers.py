"""The readers ``jobs/bench_data.py`` times, all ending in model-ready batches (dense float32,
normalised pixels) from the same shards with the same code (``ParquetUnitDecoder`` or
``PredecodedUnitReader``, then ``loader.training_collate`` + ``loader.model_batch``):

- ``raw_decode``: one process, read unit after read unit (no Ray, no transport);
- ``predecoded_read``: the same over pre-decoded shards;
- ``dataloader_read``: a plain ``torch.utils.data.DataLoader`` whose ``IterableDataset``
  (``UnitDataset``) splits the read units over its worker processes: what a user would pick
  instead of Ray Data on one node;
- ``stream_ray``: a ``build_dataset`` pipeline consumed with ``loader.iter_training_batches``.

Each returns its wall-clock from its own start (worker or actor start-up included).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch

from multimodal.config import MediaSpec
from multimodal.data.loader import iter_training_batches, model_batch, training_collate
from multimodal.data.pipeline import DEFAULT_UNIT_BATCH_ROWS, ParquetUnitDecoder, read_units


def _collated(units: list[dict], spec: MediaSpec, batch_size: int, read_unit) -> Iterator[dict]:
    """``training_collate`` batches of ``batch_size`` rows from the wire tables of ``units``."""
    collate = training_collate(spec)
    for unit in units:
        for table in read_unit(unit["path"], unit["row_group"]):
            for offset in range(0, table.num_rows, batch_size):
                yield collate(table.slice(offset, batch_size))


def consume_units(units: list[dict], spec: MediaSpec, batch_size: int, read_unit) -> int:
    """One process turning read units into model-ready batches: ``read_unit(path, row_group)``
    yields wire tables (what the pipeline's actors produce), then each ``batch_size`` slice goes
    through ``training_collate`` + ``model_batch`` (what the consumer does). Returns valid rows."""
    return sum(model_batch(batch, spec)[1].valid for batch in _collated(units, spec, batch_size, read_unit))


def raw_decode(uri: str, spec: MediaSpec, tok_json: str, batch_size: int, decode_rows: int | None = None
               ) -> tuple[int, float]:
    """(valid rows, seconds) of one process decoding the raw shards at ``uri``: ``ParquetUnitDecoder``
    reads and decodes each row group (what a decode actor does), then the consumer's steps."""
    start = time.perf_counter()
    names, units = read_units(uri)
    decoder = ParquetUnitDecoder(spec, tok_json, names, batch_size=decode_rows or DEFAULT_UNIT_BATCH_ROWS)
    rows = consume_units(units, spec, batch_size, decoder.decode_unit)
    return rows, time.perf_counter() - start


def predecoded_read(uri: str, spec: MediaSpec, batch_size: int) -> tuple[int, float]:
    """(valid rows, seconds) of one process reading pre-decoded shards into model-ready batches."""
    from multimodal.data.predecoded import PredecodedUnitReader

    start = time.perf_counter()
    names, units = read_units(uri)
    rows = consume_units(units, spec, batch_size, PredecodedUnitReader(spec, names).read_unit)
    return rows, time.perf_counter() - start


class UnitDataset(torch.utils.data.IterableDataset):
    """Collated wire batches of the read units at ``uri``; each DataLoader worker takes every
    ``num_workers``-th unit and decodes it with its own ``ParquetUnitDecoder``."""

    def __init__(self, uri: str, spec: MediaSpec, tok_json: str, batch_size: int, decode_rows: int | None = None):
        super().__init__()
        self.uri, self.spec, self.tok_json, self.batch_size = uri, spec, tok_json, batch_size
        self.decode_rows = decode_rows or DEFAULT_UNIT_BATCH_ROWS
        self.names, self.units = read_units(uri)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        mine = self.units if info is None else self.units[info.id::info.num_workers]
        torch.set_num_threads(1)
        decoder = ParquetUnitDecoder(self.spec, self.tok_json, self.names, batch_size=self.decode_rows)
        yield from _collated(mine, self.spec, self.batch_size, decoder.decode_unit)


def dataloader_read(uri: str, spec: MediaSpec, tok_json: str, batch_size: int, workers: int,
                    decode_rows: int | None = None) -> tuple[int, float]:
    """(valid rows, seconds) of a ``DataLoader`` with ``workers`` processes over ``UnitDataset``,
    its worker start-up included; ``model_batch`` runs in this process, as in a training loop."""
    start = time.perf_counter()
    loader = torch.utils.data.DataLoader(UnitDataset(uri, spec, tok_json, batch_size, decode_rows),
                                         batch_size=None, num_workers=workers, prefetch_factor=2)
    rows = sum(model_batch(batch, spec)[1].valid for batch in loader)
    return rows, time.perf_counter() - start


def stream_ray(dataset, spec: MediaSpec, batch_size: int, warm_rows: int,
               on_mark: Callable[[float], None] = lambda _t: None) -> dict:
    """Consume ``dataset`` (a ``build_dataset`` pipeline) into model-ready batches on this
    process; the steady window starts once ``warm_rows`` rows are in (``on_mark(time)``).
    ``start`` is the caller's: pass ``time.perf_counter()`` taken before ``build_dataset``."""
    rows = valid = decoded_bytes = mark_rows = 0
    first_at = mark_at = None
    for batch, stats in iter_training_batches(dataset.iterator(), batch_size, spec, device="cpu",
                                              prefetch_batches=2):
        first_at = first_at or time.perf_counter()
        rows += stats.rows
        valid += stats.valid
        decoded_bytes += sum(v.nbytes for v in batch.values())
        if mark_at is None and rows >= warm_rows:
            mark_at, mark_rows = time.perf_counter(), rows
            on_mark(mark_at)
    end = time.perf_counter()
    steady_s = end - mark_at if mark_at else 0.0
    return {"rows": rows, "valid": valid, "first_at": first_at or end, "end": end, "warmup_rows": mark_rows,
            "steady_rows": rows - mark_rows, "steady_s": steady_s,
            "steady_per_s": (rows - mark_rows) / steady_s if steady_s > 0 else 0.0,
            "decoded_mb": decoded_bytes / 1e6}


__all__ = ["consume_units", "raw_decode", "predecoded_read", "UnitDataset", "dataloader_read", "stream_ray"]
