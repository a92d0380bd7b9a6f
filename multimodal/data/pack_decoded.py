"""``slm-make-shards SOURCE --out URI --decode PRESET``: pack a corpus as pre-decoded shards.

SOURCE is a manifest or a WebDataset tar prefix (``sources.py``).

Every sample is decoded once, here, by the pipeline's own ``SampleProcessor.decode_compact`` (the
one decode path of ``decode.py``) to the preset's ``MediaSpec``, and written in the compact form of
``predecoded.py``; a training job then only reads and copies. The manifest rules are those of raw
packing (``sources.iter_source_rows``: confined media paths, ``--max-media-bytes``, skipped
rows counted, ``--strict``), and so is the output rule (a non-empty ``--out`` is refused unless
``--overwrite``; the new ``_dataset.json`` is published last).

- **Tokenizer**: the one given (``--tokenizer``), else a byte-level BPE trained here on the
  manifest's text (``--vocab-size``, default the preset's). It is stored beside the shards and
  named in ``_dataset.json``; a training job on these shards uses it.
- **Parallel**: ``workers`` processes (default: the machine's CPUs) decode chunks of rows while
  this process reads the manifest and media (local or S3) and writes shards (local or S3);
  progress every few seconds.
- **Resumable**: after each finished shard, ``_pack_progress.json`` records what is done (the
  shards, the manifest position, the counts). A pack that stops (error, Ctrl-C, lost machine)
  keeps its finished shards; the same command again continues after the last finished shard
  instead of starting over. Settings that differ from the half-done pack's are refused (or, with
  ``--overwrite``, its files are removed and the pack starts again).
"""

from __future__ import annotations

import json
import os
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

from multimodal import fs
from multimodal.config import MediaSpec, preset
from multimodal.data import predecoded
from multimodal.data.make_shards import DEFAULT_ROW_GROUP_BYTES, DEFAULT_TARGET_SHARD_BYTES
from multimodal.data.manifest import ManifestError
from multimodal.data.media_paths import DEFAULT_MAX_MEDIA_BYTES
from multimodal.data.schema import (
    ALL_MODALITIES, MEDIA_MODALITIES, DatasetSummary, read_summary, write_summary,
)
from multimodal.data.shard_writer import RateLimited, ShardWriter, claim_output, delete_quietly, remove_replaced
from multimodal.data.sources import iter_source_rows, source_texts

PROGRESS_NAME = "_pack_progress.json"
CHUNK_ROWS = 32  # rows per decode task
TEXT_COMPRESSION = "zstd"


class PackInterrupted(RuntimeError):
    """``stop_after_shards`` was reached: the pack stops as a crash would (tests of the resume)."""


@dataclass
class PackSettings:
    """What a resumed pack must share with the half-done one."""

    manifest: str
    preset: str
    media_spec: dict
    target_shard_bytes: int
    row_group_bytes: int
    allow_outside_paths: bool
    max_media_bytes: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


# --- decode workers ----------------------------------------------------------------------
_PROCESSOR = None


def _init_worker(spec: dict, tokenizer_json: str) -> None:
    """Build this worker's ``SampleProcessor`` (one torch thread: the pool is the parallelism)."""
    global _PROCESSOR
    from multimodal.data.pipeline import SampleProcessor

    _PROCESSOR = SampleProcessor(spec, tokenizer_json, ["pack"], max_consecutive_failures=10**9)


def decode_chunk(rows: list[dict]) -> list[dict]:
    """Raw rows (with ``sample_id``) → pre-decoded rows, in a worker set up by ``_init_worker``."""
    for row in rows:
        row["shard_id"] = 0
    columns, media = _PROCESSOR.decode_compact(rows)
    return predecoded.encode_rows(rows, columns, media)


def _ordered(pool: ProcessPoolExecutor | None, chunks: Iterator[tuple[list, list[dict]]], depth: int
             ) -> Iterator[tuple[list, list[dict]]]:
    """``(tags, decoded rows)`` in input order; at most ``depth`` chunks in flight."""
    if pool is None:
        for tags, rows in chunks:
            yield tags, decode_chunk(rows)
        return
    pending: deque[tuple[list, Future]] = deque()
    for tags, rows in chunks:
        pending.append((tags, pool.submit(decode_chunk, rows)))
        if len(pending) >= depth:
            done_tags, future = pending.popleft()
            yield done_tags, future.result()
    while pending:
        done_tags, future = pending.popleft()
        yield done_tags, future.result()


def _chunks(rows: Iterator[tuple[int, dict, int]], first_sample_id: int, size: int
            ) -> Iterator[tuple[list[int], list[dict]]]:
    """Chunks of raw rows with ``sample_id`` set; tags are the manifest entry indices."""
    sample_id = first_sample_id
    tags, chunk = [], []
    for index, row, _ in rows:
        row["sample_id"] = sample_id
        sample_id += 1
        tags.append(index)
        chunk.append(row)
        if len(chunk) == size:
            yield tags, chunk
            tags, chunk = [], []
    if chunk:
        yield tags, chunk


# --- tokenizer -----------------------------------------------------------------------------
def _tokenizer_json(manifest: str, tokenizer: str | None, vocab_size: int, progress) -> str:
    from multimodal.data.tokenizer import as_tokenizer, train_tokenizer

    if tokenizer:
        return as_tokenizer(tokenizer).to_str()
    if progress is not None:
        print(f"training a byte-level BPE tokenizer (vocab <= {vocab_size}) on {manifest}", file=progress,
              flush=True)
    return train_tokenizer(source_texts(manifest), vocab_size).to_str()


# --- resume state ------------------------------------------------------------------------
def _read_progress(out_uri: str) -> dict | None:
    target = fs.join(out_uri, PROGRESS_NAME)
    if not fs.exists(target):
        return None
    try:
        return json.loads(fs.read_bytes(target).decode())
    except (OSError, ValueError):
        return None


def _discard_half_done(out_uri: str, state: dict) -> None:
    """Remove a half-done pack's own files (its shards, tokenizer and progress file)."""
    delete_quietly(out_uri, [s["path"] for s in state.get("shards", [])] + [state.get("tokenizer", ""), PROGRESS_NAME])


class _Meter(RateLimited):
    def __init__(self, stream, workers: int, every_s: float = 2.0):
        super().__init__(stream, every_s)
        self.workers, self.decoded = workers, 0

    def update(self, summary: DatasetSummary, bad: dict[str, int], shards: int, force: bool = False) -> None:
        if not self.due(force):
            return
        bad_text = ", ".join(f"{m} {bad[m]}" for m in MEDIA_MODALITIES)
        print(f"decoded {summary.rows} rows ({self.rate(self.decoded):.1f} rows/s this run, {self.workers} worker(s)), "
              f"{shards} shard(s) done, bad {bad_text}, skipped {summary.skipped_rows}",
              file=self.stream, flush=True)


# --- the pack ----------------------------------------------------------------------------
@dataclass
class _Pack:
    """A pack in progress: what it writes under, its tokenizer, counts, and resume point."""

    out_uri: str
    settings: PackSettings
    name_tag: str
    tokenizer_name: str
    tokenizer_json: str
    summary: DatasetSummary
    bad: dict[str, int]
    start_entry: int
    previous: DatasetSummary | None
    stop_after_shards: int | None = None
    writer: ShardWriter | None = None
    next_entry: int = 0
    closed_this_run: int = 0

    def __post_init__(self):
        self.next_entry = self.start_entry
        # the source is read ahead of the writer: a skip counts once the writer has passed its entry
        self.skips_before = (self.summary.skipped_rows, dict(self.summary.skipped_by_reason))
        self.skips: list[tuple[int, str]] = []

    def settle_skips(self) -> None:
        done = [reason for index, reason in self.skips if index < self.next_entry]
        self.summary.skipped_rows = self.skips_before[0] + len(done)
        self.summary.skipped_by_reason = dict(self.skips_before[1])
        for reason in done:
            self.summary.skipped_by_reason[reason] = self.summary.skipped_by_reason.get(reason, 0) + 1

    def save_state(self) -> None:
        """Publish the resume point: the finished shards and the counts of their rows."""
        self.settle_skips()
        self.summary.shards = list(self.writer.shards)
        fs.write_bytes_atomic(fs.join(self.out_uri, PROGRESS_NAME), json.dumps({
            "settings": self.settings.as_dict(), "tag": self.name_tag, "tokenizer": self.tokenizer_name,
            "next_entry": self.next_entry, "bad": self.bad, "shards": self.writer.shards,
            "summary": self.summary.to_dict()}, indent=1).encode())

    def record_shard(self) -> None:
        self.save_state()
        self.closed_this_run += 1
        if self.stop_after_shards is not None and self.closed_this_run >= self.stop_after_shards:
            raise PackInterrupted(f"stopped after {self.closed_this_run} shard(s) (stop_after_shards)")


def _begin(settings: PackSettings, out_uri: str, overwrite: bool, tokenizer: str | None, vocab_size: int,
           progress) -> _Pack:
    """Resume the half-done pack at ``out_uri`` (same settings) or claim the output for a new one."""
    state = _read_progress(out_uri)
    if state is not None and state.get("settings") != settings.as_dict():
        if not overwrite:
            raise ManifestError(f"{out_uri} holds a half-done pack with other settings "
                                f"({PROGRESS_NAME}); pass --overwrite to discard it and start again")
        _discard_half_done(out_uri, state)
        state = None
    if state is None:
        name_tag, previous = claim_output(out_uri, overwrite)
        tokenizer_name = f"tokenizer-{name_tag}.json" if name_tag else "tokenizer.json"
        tokenizer_json = _tokenizer_json(settings.manifest, tokenizer, vocab_size, progress)
        fs.write_bytes_atomic(fs.join(out_uri, tokenizer_name), tokenizer_json.encode())
        return _Pack(out_uri, settings, name_tag, tokenizer_name, tokenizer_json, DatasetSummary(),
                     {m: 0 for m in MEDIA_MODALITIES}, 0, previous)
    previous = read_summary(out_uri)  # resume: only our own files (and, with --overwrite, an old dataset)
    if previous is not None and not overwrite:
        raise ManifestError(f"{out_uri} is not empty (a dataset is published there); pass --overwrite to replace it")
    pack = _Pack(out_uri, settings, state["tag"], state["tokenizer"],
                 fs.read_bytes(fs.join(out_uri, state["tokenizer"])).decode(),
                 DatasetSummary.from_dict(state["summary"]), dict(state["bad"]), int(state["next_entry"]), previous)
    if progress is not None:
        print(f"resuming the pack at {out_uri}: {len(pack.summary.shards)} shard(s), {pack.summary.rows} rows "
              f"already done", file=progress, flush=True)
    return pack


def pack_decoded(manifest: str, out_uri: str, preset_name: str, *, tokenizer: str | None = None,
                 vocab_size: int | None = None, workers: int | None = None,
                 target_shard_bytes: float = DEFAULT_TARGET_SHARD_BYTES,
                 row_group_bytes: float = DEFAULT_ROW_GROUP_BYTES, strict: bool = False,
                 progress="stderr", overwrite: bool = False, allow_outside_paths: bool = False,
                 max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES, stop_after_shards: int | None = None
                 ) -> DatasetSummary:
    """Pack ``manifest`` (or a WebDataset prefix) as pre-decoded shards for ``preset_name`` under
    ``out_uri`` (see the module docstring); returns the published summary. ``workers``: decode
    processes (1 = in this process). ``stop_after_shards`` (tests): stop like a crash after that
    many shards of this run."""
    progress = sys.stderr if progress == "stderr" else progress
    manifest, out_uri = str(manifest), str(out_uri).rstrip("/")
    try:
        model = preset(preset_name)
    except ValueError as exc:
        raise ManifestError(str(exc)) from None
    if target_shard_bytes <= 0 or max_media_bytes <= 0:
        raise ManifestError("target shard size and max media bytes must be positive")
    spec: MediaSpec = model.media
    workers = max(1, int(workers or os.cpu_count() or 1))
    settings = PackSettings(manifest, preset_name, spec.model_dump(), int(target_shard_bytes),
                            int(row_group_bytes), bool(allow_outside_paths), int(max_media_bytes))
    pack = _begin(settings, out_uri, overwrite, tokenizer, int(vocab_size or model.core.vocab_size), progress)
    pack.stop_after_shards = stop_after_shards
    summary = pack.summary
    summary.schema_version = predecoded.PREDECODED_SCHEMA_VERSION
    summary.decoded = {"preset": preset_name, "media_spec": spec.model_dump(), "tokenizer": pack.tokenizer_name,
                       "tokenizer_sha256": predecoded.tokenizer_sha256(pack.tokenizer_json),
                       "audio_dtype": "float16", "bad": pack.bad}
    compression = {c: ("none" if c in MEDIA_MODALITIES else TEXT_COMPRESSION)
                   for c in predecoded.PREDECODED_SCHEMA.names}
    pack.writer = ShardWriter(out_uri, int(target_shard_bytes), int(row_group_bytes), pack.name_tag,
                              schema=predecoded.PREDECODED_SCHEMA, compression=compression, dictionary=("prompt",),
                              done_shards=summary.shards, on_close=pack.record_shard)
    pack.save_state()  # from now on the same command resumes this pack (even before its first shard)
    rows = iter_source_rows(manifest, DatasetSummary(), strict=strict, progress=progress,
                            allow_outside_paths=allow_outside_paths, max_media_bytes=max_media_bytes,
                            start_entry=pack.start_entry, on_skip=lambda i, reason: pack.skips.append((i, reason)))
    _decode_into(pack, rows, workers, spec, _Meter(progress, workers))
    if summary.rows == 0:
        raise ManifestError(f"{manifest}: no usable rows ({summary.skipped_rows} skipped)")
    write_summary(out_uri, summary)  # publish: the old dataset stays whole until this succeeds
    _remove_stale(out_uri, pack.previous, pack.tokenizer_name)
    remove_replaced(out_uri, pack.previous, summary, progress)
    if progress is not None:
        counts = ", ".join(f"{m} {summary.modalities[m]['count']}" for m in ALL_MODALITIES)
        print(f"done: {summary.rows} pre-decoded rows ({preset_name} spec) in {len(summary.shards)} shard(s), "
              f"{summary.bytes / 1e6:.1f} MB ({counts}; bad {pack.bad}); skipped {summary.skipped_rows} → {out_uri}",
              file=progress, flush=True)
    return summary


def _decode_into(pack: _Pack, rows: Iterator[tuple[int, dict, int]], workers: int, spec: MediaSpec,
                 meter: _Meter) -> None:
    """Decode ``rows`` (in ``workers`` processes) and write them; finished shards stay on failure."""
    pool = _pool(workers, spec, pack.tokenizer_json)
    try:
        for tags, decoded in _ordered(pool, _chunks(rows, pack.summary.rows, CHUNK_ROWS), 2 * workers):
            for index, record in zip(tags, decoded):
                _count_decoded(pack.summary, pack.bad, record)
                pack.next_entry = index + 1
                pack.writer.add(record, predecoded.row_bytes(record))
                meter.decoded += 1
            meter.update(pack.summary, pack.bad, len(pack.writer.shards))
        pack.next_entry = 1 << 62  # every entry is in a shard once the last one closes
        pack.settle_skips()
        pack.writer.finish()
    except BaseException:
        pack.writer.abort(keep_finished=True)  # finished shards stay for the resume
        raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    pack.summary.shards = list(pack.writer.shards)
    pack.summary.bytes = sum(s["bytes"] for s in pack.summary.shards)
    meter.update(pack.summary, pack.bad, len(pack.summary.shards), force=True)


def _pool(workers: int, spec: MediaSpec, tokenizer_json: str) -> ProcessPoolExecutor | None:
    if workers <= 1:
        _init_worker(spec.model_dump(), tokenizer_json)
        return None
    import multiprocessing

    # spawn: the workers import torch themselves rather than inherit a forked copy of this process
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(spec.model_dump(), tokenizer_json))


def _count_decoded(summary: DatasetSummary, bad: dict[str, int], record: dict) -> None:
    """Counts as ``make_shards._count`` does, from a pre-decoded row (stored bytes per modality)."""
    summary.rows += 1
    if record["text"]:
        summary.modalities["text"]["count"] += 1
        summary.modalities["text"]["bytes"] += len(record["tokens"]) + len(record["text"].encode())
    for modality in MEDIA_MODALITIES:
        if record[modality]:
            summary.modalities[modality]["count"] += 1
            summary.modalities[modality]["bytes"] += len(record[modality])
        bad[modality] += int(record[f"bad_{modality}"])


def _remove_stale(out_uri: str, previous: DatasetSummary | None, tokenizer_name: str) -> None:
    """After publishing: the progress file, and the replaced dataset's own tokenizer file."""
    old = (previous.decoded or {}).get("tokenizer") if previous is not None else None
    delete_quietly(out_uri, [PROGRESS_NAME] + ([old] if old and old != tokenizer_name else []))


__all__ = ["pack_decoded", "decode_chunk", "PROGRESS_NAME", "PackInterrupted"]
