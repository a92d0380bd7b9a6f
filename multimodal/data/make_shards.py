"""``slm-make-shards MANIFEST --out URI``: pack a corpus into Parquet shards plus ``_dataset.json``.

The manifest is a CSV (header row) or JSONL file (``.jsonl``/``.ndjson``/``.json``) with a
``text`` column and optional ``image``, ``audio``, ``video`` (paths relative to the manifest, or
absolute paths / ``s3://`` URIs inside the manifest's folder or prefix), ``id`` and ``prompt``
columns. Any subset of modalities per row; text-only rows are fine. Media are stored as their
original encoded bytes.

Shards (``shard-00000.parquet`` ...) are closed once they reach ``target_shard_bytes``; inside,
row groups hold at most ``row_group_bytes`` (default 32 MB) so a reader streams a shard one row
group at a time. Writes are atomic: a local shard is written under a hidden temporary name and
renamed; on S3 it is staged in a local temporary file and uploaded as one object, which appears
only when the upload completes. ``_dataset.json`` is written last, and readers only take the
shards it lists, so a failed run leaves nothing a reader would take as complete (this run's
finished shards and temporary files are removed on failure too, and nothing else).

An existing dataset is never damaged: a non-empty ``--out`` is refused unless ``--overwrite``;
with it, the new shards get names no file there has (``shard-<run tag>-00000.parquet``), the new
``_dataset.json`` replaces the old one last (the old dataset stays whole until then), and only
after that are the old summary's shards removed.

Media paths are confined to the manifest's folder/prefix (``media_paths.py``;
``--allow-outside-paths`` lifts that), only regular files are read, and a file over
``--max-media-bytes`` (default 256 MB) is refused. A missing, refused or oversized media file is
reported with its manifest line and the row is skipped and counted by reason; ``--strict`` makes
it fatal.

``--decode PRESET`` writes pre-decoded shards instead (``pack_decoded.py``, ``predecoded.py``):
each sample decoded once, now, to the preset's media spec.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import posixpath
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from multimodal import fs
from multimodal.config import PRESETS
from multimodal.data.failure_rate import DatasetBrokenError
from multimodal.data.media_paths import (
    DEFAULT_MAX_MEDIA_BYTES, MediaMissing, MediaRefused, manifest_dir, read_media, resolve_media,
)
from multimodal.data.schema import (
    ALL_MODALITIES, MEDIA_MODALITIES, SHARD_SCHEMA, DatasetSummary, read_summary, shard_name,
    write_summary,
)

DEFAULT_TARGET_SHARD_BYTES = 256_000_000
DEFAULT_ROW_GROUP_BYTES = 32_000_000
MANIFEST_COLUMNS = ("id", "text", "prompt") + MEDIA_MODALITIES
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


class ManifestError(ValueError):
    """Bad manifest or (with ``strict``) a missing media file; the CLI prints it and exits 2."""


@dataclass
class ManifestRow:
    line: int
    fields: dict[str, str]


def read_manifest(manifest: str) -> Iterator[ManifestRow]:
    """Rows of a CSV or JSONL manifest with the (1-based) line each starts on."""
    manifest = str(manifest)
    try:
        raw = fs.read_bytes(manifest)
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {manifest}") from None
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {manifest}: {exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ManifestError(f"{manifest}: not UTF-8 text") from None
    if manifest.lower().endswith(JSONL_SUFFIXES):
        yield from _read_jsonl(manifest, text)
    else:
        yield from _read_csv(manifest, text)


def _clean(record: dict, where: str) -> dict[str, str]:
    if "text" not in record:
        raise ManifestError(f"{where}: no 'text' column/key (columns: {sorted(record)})")
    out = {}
    for key in MANIFEST_COLUMNS:
        value = record.get(key)
        out[key] = "" if value is None else str(value).strip() if key not in ("text", "prompt") else str(value)
    return out


def _read_csv(manifest: str, text: str) -> Iterator[ManifestRow]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames or "text" not in [f.strip() for f in reader.fieldnames]:
        raise ManifestError(f"{manifest}: CSV header must have a 'text' column "
                            f"(got {reader.fieldnames or 'no header'})")
    reader.fieldnames = [f.strip() for f in reader.fieldnames]
    start = 2
    for record in reader:
        if None in record:
            raise ManifestError(f"{manifest}:{start}: more fields than header columns")
        yield ManifestRow(start, _clean(record, f"{manifest}:{start}"))
        start = reader.line_num + 1


def _read_jsonl(manifest: str, text: str) -> Iterator[ManifestRow]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{manifest}:{number}: invalid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ManifestError(f"{manifest}:{number}: each line must be a JSON object")
        yield ManifestRow(number, _clean(record, f"{manifest}:{number}"))


def media_extension(path: str) -> str:
    suffix = posixpath.splitext(path.rstrip("/"))[1]
    return suffix.lower().lstrip(".")


def iter_manifest_rows(manifest: str, summary: DatasetSummary, *, strict: bool = False, progress=None,
                       allow_outside_paths: bool = False, max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES,
                       start_entry: int = 0, on_skip: Callable[[int, str], None] | None = None
                       ) -> Iterator[tuple[int, dict, int]]:
    """``(manifest entry index, row, payload bytes)`` for every usable manifest row, media read as
    encoded bytes under the confinement and size rules (``media_paths.py``); rows in the shard
    schema without ``sample_id``. A skipped row is warned about on ``progress`` and counted in
    ``summary.skipped_rows``/``skipped_by_reason`` (``strict``: ``ManifestError`` instead).
    Entries before ``start_entry`` (a resumed pack's done part) are passed over unread;
    ``on_skip(entry index, reason)`` is told of each skipped row."""
    manifest = str(manifest)
    base_dir = manifest_dir(manifest)
    stem = posixpath.splitext(posixpath.basename(manifest))[0] or "sample"
    for index, entry in enumerate(read_manifest(manifest)):
        if index < start_entry:
            continue
        record = entry.fields
        row = {"id": record["id"] or f"{stem}-{index:08d}", "text": record["text"], "prompt": record["prompt"]}
        size = len(row["text"].encode()) + len(row["prompt"].encode()) + len(row["id"])
        problem = reason = None
        for modality in MEDIA_MODALITIES:
            row[modality] = row[f"{modality}_ext"] = None
            if not record[modality]:
                continue
            try:
                location = resolve_media(base_dir, record[modality], allow_outside_paths)
                data = read_media(location, int(max_media_bytes))
            except MediaRefused as exc:
                problem, reason = f"refused {modality} file: {exc}", "refused"
                break
            except (MediaMissing, IsADirectoryError, PermissionError):
                problem, reason = f"missing {modality} file {record[modality]}", "missing"
                break
            except OSError as exc:
                if "not found" in str(exc).lower() or "nosuchkey" in str(exc).lower():
                    problem, reason = f"missing {modality} file {record[modality]}", "missing"
                    break
                raise
            row[modality] = data
            row[f"{modality}_ext"] = media_extension(location)
            size += len(data)
        if problem is None and not row["text"] and not any(row[m] is not None for m in MEDIA_MODALITIES):
            problem, reason = "row has neither text nor media", "empty"
        if problem is not None:
            message = f"{manifest}:{entry.line}: {problem}"
            if strict:
                raise ManifestError(message)
            summary.skipped_rows += 1
            summary.skipped_by_reason[reason] = summary.skipped_by_reason.get(reason, 0) + 1
            if on_skip is not None:
                on_skip(index, reason)
            if progress is not None:
                print(f"warning: {message} (row skipped)", file=progress, flush=True)
            continue
        yield index, row, size


class _ShardWriter:
    """Writes rows into size-capped shards, one row group per ``row_group_bytes`` of rows."""

    def __init__(self, out_uri: str, target_shard_bytes: int, row_group_bytes: int, name_tag: str = "",
                 *, schema: pa.Schema = SHARD_SCHEMA, compression: dict[str, str] | None = None,
                 dictionary: Sequence[str] = ("id", "prompt", "image_ext", "audio_ext", "video_ext"),
                 done_shards: Sequence[dict] = (), on_close: Callable[[], None] | None = None):
        self.out_uri = out_uri
        self.schema = schema
        self.compression = compression or {c: ("none" if c in MEDIA_MODALITIES else "zstd")
                                           for c in schema.names}
        self.dictionary = [c for c in dictionary if c in schema.names]
        self.on_close = on_close  # called after each finished shard (resumable packs record it)
        self.name_tag = name_tag  # "" → shard-00000.parquet; "t" → shard-t-00000.parquet
        self.filesystem, self.root = fs.filesystem_for(out_uri)
        self.local = isinstance(self.filesystem, pafs.LocalFileSystem)
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        self.target = int(target_shard_bytes)
        self.row_group_bytes = max(1, min(int(row_group_bytes), self.target))
        self.shards: list[dict] = list(done_shards)  # a resumed pack continues the numbering
        self._buffer: list[dict] = []
        self._buffer_bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._tmp_path: str | None = None
        self._rows = 0
        self._bytes = 0
        self._row_groups = 0
        self._finished_paths: list[str] = []

    def _name(self) -> str:
        name = shard_name(len(self.shards))
        return name.replace("shard-", f"shard-{self.name_tag}-", 1) if self.name_tag else name

    def _open(self) -> None:
        name = self._name()
        if self.local:
            self._tmp_path = os.path.join(self.root, f".{name}.tmp-{os.getpid()}")
        else:
            handle, self._tmp_path = tempfile.mkstemp(prefix=".slm-shard-", suffix=".parquet")
            os.close(handle)
        self._writer = pq.ParquetWriter(
            self._tmp_path, self.schema, compression=self.compression,
            use_dictionary=self.dictionary, write_statistics=["sample_id"],
        )
        self._rows = self._bytes = self._row_groups = 0

    def add(self, row: dict, size: int) -> None:
        if self._writer is None:
            self._open()
        self._buffer.append(row)
        self._buffer_bytes += size
        self._rows += 1
        self._bytes += size
        if self._buffer_bytes >= self.row_group_bytes:
            self._flush()
        if self._bytes >= self.target:
            self._close_shard()

    def _flush(self) -> None:
        if self._buffer and self._writer is not None:
            self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema),
                                     row_group_size=len(self._buffer))
            self._row_groups += 1
        self._buffer, self._buffer_bytes = [], 0

    def _close_shard(self) -> None:
        if self._writer is None:
            return
        self._flush()
        self._writer.close()
        self._writer = None
        name = self._name()
        final = posixpath.join(self.root, name) if not self.local else os.path.join(self.root, name)
        if self.local:
            os.replace(self._tmp_path, final)
            size = os.path.getsize(final)
        else:
            size = os.path.getsize(self._tmp_path)
            with open(self._tmp_path, "rb") as src, self.filesystem.open_output_stream(final) as dst:
                while chunk := src.read(8 * 1024 * 1024):
                    dst.write(chunk)
            os.unlink(self._tmp_path)
        self._tmp_path = None
        self._finished_paths.append(final)
        # row_groups: readers split the work per row group (multimodal/data/pipeline.py)
        self.shards.append({"path": name, "rows": self._rows, "bytes": size, "row_groups": self._row_groups})
        if self.on_close is not None:
            self.on_close()

    def finish(self) -> list[dict]:
        self._close_shard()
        return self.shards

    def abort(self, keep_finished: bool = False) -> None:
        """Remove this run's temporary file and (unless ``keep_finished``: a resumable pack)
        its finished shards (best effort)."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001
                pass
        if self._tmp_path and os.path.exists(self._tmp_path):
            os.unlink(self._tmp_path)
        if keep_finished:
            return
        for path in self._finished_paths:
            try:
                self.filesystem.delete_file(path)
            except OSError:
                pass


class _Progress:
    def __init__(self, stream, every_s: float = 2.0):
        self.stream, self.every_s = stream, every_s
        self.start = self.last = time.monotonic()

    def update(self, rows: int, skipped: int, shards: int, nbytes: int, force: bool = False) -> None:
        now = time.monotonic()
        if self.stream is None or (not force and now - self.last < self.every_s):
            return
        self.last = now
        rate = rows / max(now - self.start, 1e-9)
        print(f"packed {rows} rows ({nbytes / 1e6:.1f} MB, {shards} shard(s) done), "
              f"skipped {skipped}, {rate:.0f} rows/s", file=self.stream, flush=True)


def existing_files(out_uri: str) -> list[str]:
    """Names (relative to ``out_uri``) of the files already under an output folder/prefix."""
    filesystem, root = fs.filesystem_for(out_uri)
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    try:
        infos = filesystem.get_file_info(selector)
    except (NotADirectoryError, FileNotFoundError):
        infos = [filesystem.get_file_info(root)]
        return [root] if infos[0].type == pafs.FileType.File else []
    return sorted(posixpath.relpath(i.path, root) for i in infos if i.type == pafs.FileType.File)


def _claim_output(out_uri: str, overwrite: bool) -> tuple[str, DatasetSummary | None]:
    """The shard-name tag for this run and the dataset it replaces; refuses a non-empty prefix
    unless ``overwrite``."""
    present = existing_files(out_uri)
    if not present:
        return "", None
    if not overwrite:
        raise ManifestError(f"{out_uri} is not empty ({len(present)} file(s), e.g. {present[0]}); "
                            f"pass --overwrite to replace the dataset there")
    try:
        previous = read_summary(out_uri)
    except (ValueError, OSError):
        previous = None  # an unreadable summary: keep its shards, they are not ours to delete
    tag = time.strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(3)
    return tag, previous


def _remove_replaced(out_uri: str, previous: DatasetSummary | None, summary: DatasetSummary,
                     progress) -> None:
    """After the new summary is published: delete the old summary's shards (best effort)."""
    if previous is None:
        return
    filesystem, root = fs.filesystem_for(out_uri)
    keep = set(summary.shard_names)
    removed = 0
    for name in previous.shard_names:
        if name in keep or "/" in name or name.startswith("."):
            continue
        try:
            filesystem.delete_file(posixpath.join(root, name))
            removed += 1
        except OSError:
            pass
    if progress is not None:
        print(f"replaced the previous dataset ({removed} old shard(s) removed)", file=progress, flush=True)


def make_shards(manifest: str, out_uri: str, target_shard_bytes: float = DEFAULT_TARGET_SHARD_BYTES,
                strict: bool = False, *, row_group_bytes: float = DEFAULT_ROW_GROUP_BYTES,
                progress="stderr", overwrite: bool = False, allow_outside_paths: bool = False,
                max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES) -> DatasetSummary:
    """Pack ``manifest`` into Parquet shards under ``out_uri``; returns the written summary.

    Raises ``ManifestError`` for a bad manifest, a non-empty ``out_uri`` without ``overwrite``,
    or (when ``strict``) a media file that is missing, outside the manifest's folder/prefix (unless
    ``allow_outside_paths``), not a regular file, or over ``max_media_bytes``.
    ``progress`` is a text stream for progress and warnings (default stderr; None: silent).
    """
    if progress == "stderr":
        progress = sys.stderr
    manifest = str(manifest)
    out_uri = str(out_uri).rstrip("/")
    if target_shard_bytes <= 0:
        raise ManifestError("target shard size must be positive")
    if max_media_bytes <= 0:
        raise ManifestError("max media bytes must be positive")
    name_tag, previous = _claim_output(out_uri, overwrite)
    summary = DatasetSummary()
    writer = _ShardWriter(out_uri, int(target_shard_bytes), int(row_group_bytes), name_tag)
    meter = _Progress(progress)
    rows = 0
    try:
        for _, row, size in iter_manifest_rows(manifest, summary, strict=strict, progress=progress,
                                               allow_outside_paths=allow_outside_paths,
                                               max_media_bytes=max_media_bytes):
            row["sample_id"] = rows
            _count(summary, row)
            writer.add(row, size)
            rows += 1
            meter.update(rows, summary.skipped_rows, len(writer.shards), summary.bytes)
        summary.shards = writer.finish()
    except BaseException:
        writer.abort()
        raise
    summary.rows = rows
    skipped = summary.skipped_rows
    summary.bytes = sum(s["bytes"] for s in summary.shards)
    if rows == 0:
        writer.abort()
        raise ManifestError(f"{manifest}: no usable rows ({skipped} skipped)")
    try:
        write_summary(out_uri, summary)  # publish: the old dataset stays whole until this succeeds
    except BaseException:
        writer.abort()
        raise
    _remove_replaced(out_uri, previous, summary, progress)
    meter.update(rows, skipped, len(summary.shards), summary.bytes, force=True)
    if progress is not None:
        counts = ", ".join(f"{m} {summary.modalities[m]['count']}" for m in ALL_MODALITIES)
        print(f"done: {rows} rows in {len(summary.shards)} shard(s), {summary.bytes / 1e6:.1f} MB "
              f"({counts}); skipped {skipped} → {out_uri}", file=progress, flush=True)
    return summary


def _count(summary: DatasetSummary, row: dict) -> None:
    # summary.bytes is the raw payload while packing; it is replaced by the file sizes at the end.
    payload = 0
    if row["text"]:
        n = len(row["text"].encode())
        summary.modalities["text"]["count"] += 1
        summary.modalities["text"]["bytes"] += n
        payload += n
    for modality in MEDIA_MODALITIES:
        if row[modality] is not None:
            summary.modalities[modality]["count"] += 1
            summary.modalities[modality]["bytes"] += len(row[modality])
            payload += len(row[modality])
    summary.bytes += payload


def _size(text: str) -> float:
    units = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
             "kib": 1024, "mib": 1024**2, "gib": 1024**3}
    cleaned = text.strip().lower().replace("_", "")
    number = cleaned.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = cleaned[len(number):].strip()
    if unit not in units:
        raise argparse.ArgumentTypeError(f"bad size {text!r}; use e.g. 256MB, 1GiB, 5000000")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r}; use e.g. 256MB, 1GiB, 5000000") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="slm-make-shards",
        description="Pack a CSV/JSONL manifest of text + image/audio/video files into Parquet shards "
                    "(media kept as encoded bytes) with a _dataset.json summary, locally or on S3 "
                    "(endpoint and credentials from the AWS_* environment).")
    parser.add_argument("manifest", help="CSV or JSONL manifest (local path or s3:// URI)")
    parser.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    parser.add_argument("--target-shard-size", type=_size, default=DEFAULT_TARGET_SHARD_BYTES,
                        metavar="SIZE", help="close a shard at about this many bytes (default 256MB)")
    parser.add_argument("--row-group-size", type=_size, default=DEFAULT_ROW_GROUP_BYTES, metavar="SIZE",
                        help="bytes per Parquet row group, the unit a reader holds in memory (default 32MB)")
    parser.add_argument("--strict", action="store_true",
                        help="a missing, refused or oversized media file is fatal (default: skip the row)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the dataset already at --out (new shard names; the new "
                             "_dataset.json is published last, then the old shards are removed)")
    parser.add_argument("--allow-outside-paths", action="store_true",
                        help="trust media paths outside the manifest's folder/prefix (absolute, ~, "
                             "'..', file://, other buckets)")
    parser.add_argument("--max-media-bytes", type=_size, default=DEFAULT_MAX_MEDIA_BYTES, metavar="SIZE",
                        help="refuse a media file larger than this (default 256MB)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    decoded = parser.add_argument_group(
        "pre-decoded shards", "store samples already decoded to a preset's media spec (docs/data.md)")
    decoded.add_argument("--decode", metavar="PRESET", choices=sorted(PRESETS),
                         help="decode every sample now, to this preset's spec (tiny, slm-63m): uint8 "
                              "pixels, float16 log-mels, token ids; training then only reads them")
    decoded.add_argument("--tokenizer", metavar="URI",
                         help="with --decode: tokenizer.json to tokenize with (default: train one on "
                              "the manifest's text)")
    decoded.add_argument("--vocab-size", type=int, metavar="N",
                         help="with --decode: vocabulary of the tokenizer trained here (default: the preset's)")
    decoded.add_argument("--workers", type=int, metavar="N",
                         help="with --decode: decode processes (default: this machine's CPUs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.decode is None and (args.tokenizer or args.vocab_size or args.workers):
        parser.error("--tokenizer, --vocab-size and --workers go with --decode PRESET")
    if (args.workers is not None and args.workers < 1) or (args.vocab_size is not None and args.vocab_size < 260):
        parser.error("--workers must be >= 1 and --vocab-size >= 260")
    common = dict(strict=args.strict, row_group_bytes=args.row_group_size,
                  progress=None if args.quiet else sys.stderr, overwrite=args.overwrite,
                  allow_outside_paths=args.allow_outside_paths, max_media_bytes=int(args.max_media_bytes))
    try:
        if args.decode:
            from multimodal.data.pack_decoded import pack_decoded

            pack_decoded(args.manifest, args.out, args.decode, tokenizer=args.tokenizer,
                         vocab_size=args.vocab_size, workers=args.workers,
                         target_shard_bytes=args.target_shard_size, **common)
        else:
            make_shards(args.manifest, args.out, args.target_shard_size, **common)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except DatasetBrokenError as exc:
        print(f"error: dataset broken: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
