"""Read shards in one process through the training path: no Ray cluster, the same code.

Raw Parquet shards go through ``ParquetUnitDecoder``'s decoding (``SampleProcessor.__call__``),
pre-decoded shards through ``predecoded.to_wire``: both give **wire rows** (``data/wire.py``),
exactly what the Ray pipeline's decode actors emit, plus the sample's ``text`` (for caption
scores). ``iter_model_batches`` then makes model batches the way a training worker does:
``training_collate`` (wire → tensors) and ``loader.model_batch`` (invalid rows dropped, absent
modalities filled, pixels normalised). Evaluation, calibration and the plain-process training
runtime (``multimodal/training/local.py``) read shards with this module.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa

from multimodal import fs
from multimodal.config import MediaSpec
from multimodal.data import predecoded, schema
from multimodal.data.loader import BatchStats, model_batch, training_collate
from multimodal.data.pipeline import SampleProcessor, _as_str, iter_shard_batches, read_units


def _summary(uri: str) -> schema.DatasetSummary:
    summary = schema.read_summary(uri)
    if summary is None:
        raise FileNotFoundError(f"{uri}: no _dataset.json; pack the data with slm-make-shards first")
    return summary


def iter_wire_tables(uri: str, spec: MediaSpec, tokenizer, batch_size: int, *,
                     shards: Sequence[str] | None = None, max_consecutive_failures: int = 10**9
                     ) -> Iterator[pa.Table]:
    """Wire-row tables (at most ``batch_size`` rows, plus a ``text`` column) of the Parquet shards
    at ``uri`` (raw or pre-decoded; ``shards`` picks a subset by name), in shard order."""
    summary = _summary(uri)
    names, units = read_units(uri, shards)
    if predecoded.is_predecoded(summary):
        index = {name: i for i, name in enumerate(names)}
        for unit in units:
            shard_id = index.get(posixpath.basename(unit["path"]), -1)
            for batch in predecoded.iter_unit_batches(unit["path"], batch_size, unit["row_group"],
                                                      extra_columns=("text",)):
                yield predecoded.to_wire(batch, spec, shard_id).append_column("text", batch.column("text"))
        return
    decoder = SampleProcessor(spec, tokenizer, names, max_consecutive_failures, torch_threads=None)
    for unit in units:
        for data in iter_shard_batches(unit["path"], batch_size, unit["row_group"]):
            texts = pa.array([_as_str(t) for t in data.get("text", [""] * len(data["path"]))], pa.string())
            yield decoder(data).append_column("text", texts)


def check_model_matches(uri: str, model) -> None:
    """Pre-decoded shards must have been made for ``model``'s media spec and tokenizer."""
    summary = _summary(uri)
    if not predecoded.is_predecoded(summary):
        return
    predecoded.check_spec(summary, model.cfg.media, uri, model.cfg.preset)
    if predecoded.tokenizer_sha256(model.tokenizer.to_str()) != summary.decoded["tokenizer_sha256"]:
        raise ValueError(f"{uri} was tokenized with another tokenizer than the model's; evaluate on "
                         "raw shards or re-pack with --tokenizer <model>/tokenizer.json")


@dataclass
class ModelBatch:
    """One batch as a training worker sees it, plus the references of its valid rows."""

    batch: dict  # the contract keys (multimodal/batch.py) and sample_id/shard_id, as torch tensors
    stats: BatchStats
    texts: list[str]  # the ``text`` of each row of ``batch``


def iter_model_batches(uri: str, spec: MediaSpec, tokenizer, batch_size: int,
                       max_samples: int | None = None, device=None) -> Iterator[ModelBatch]:
    """Model batches of the shards at ``uri`` (see the module docstring); at most ``max_samples``
    rows are read (invalid ones included). Batches whose rows were all invalid are skipped."""
    collate = training_collate(spec, keep_ids=True)
    seen = 0
    for table in iter_wire_tables(uri, spec, tokenizer, batch_size):
        if max_samples is not None:
            table = table.slice(0, max_samples - seen)
        seen += table.num_rows
        collated = collate(table)
        valid = collated["sample_valid"].numpy().astype(bool)
        texts = [t or "" for t, ok in zip(table.column("text").to_pylist(), valid) if ok]
        if device is not None:
            collated = {k: v.to(device) for k, v in collated.items()}
        batch, stats = model_batch(collated, spec, keep_ids=True)
        if texts:
            yield ModelBatch(batch, stats, texts)
        if max_samples is not None and seen >= max_samples:
            return


def iter_shard_rows(uri: str, batch_size: int, max_samples: int | None = None) -> Iterator[list[dict]]:
    """Raw rows in the shard schema (encoded media bytes, ``sample_id`` as stored: from 0), plus
    ``shard_id``, ``batch_size`` at a time, streamed (a whole shard is never held in memory)."""
    import pyarrow.parquet as pq

    summary, root, seen = _summary(uri), schema.dataset_root(uri), 0
    for shard_id, name in enumerate(summary.shard_names):
        filesystem, path = fs.filesystem_for(fs.join(root, name))
        with filesystem.open_input_file(path) as handle:
            for record_batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_size):
                rows = record_batch.to_pylist()[:None if max_samples is None else max_samples - seen]
                for row in rows:
                    row["shard_id"] = shard_id
                seen += len(rows)
                if rows:
                    yield rows
                if max_samples is not None and seen >= max_samples:
                    return


__all__ = ["iter_wire_tables", "iter_model_batches", "iter_shard_rows", "check_model_matches", "ModelBatch"]
