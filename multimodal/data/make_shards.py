"""``slm-make-shards MANIFEST --out URI``: pack a corpus into Parquet shards plus ``_dataset.json``.

The manifest is a CSV (header row) or JSONL file (``.jsonl``/``.ndjson``/``.json``) with a
``text`` column and optional ``image``, ``audio``, ``video`` (paths: relative to the manifest,
absolute, or ``s3://`` URIs), ``id`` and ``prompt`` columns. Any subset of modalities per row;
text-only rows are fine. Media are stored as their original encoded bytes.

Shards (``shard-00000.parquet`` ...) are closed once they reach ``target_shard_bytes``; inside,
row groups hold at most ``row_group_bytes`` (default 32 MB) so a reader streams a shard one row
group at a time. Writes are atomic: a local shard is written under a hidden temporary name and
renamed; on S3 it is staged in a local temporary file and uploaded as one object, which appears
only when the upload completes. ``_dataset.json`` is written last, and readers only take the
shards it lists, so a failed run leaves nothing a reader would take as complete (this run's
finished shards and temporary files are removed on failure too).

A missing media file is reported with its manifest line and the row is skipped and counted;
``--strict`` makes it fatal.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import posixpath
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from multimodal import fs
from multimodal.data.schema import (
    ALL_MODALITIES, MEDIA_MODALITIES, SHARD_SCHEMA, DatasetSummary, shard_name, write_summary,
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


def _manifest_dir(manifest: str) -> str:
    manifest = str(manifest)
    if fs.is_s3(manifest):
        return manifest.rsplit("/", 1)[0]
    return str(Path(manifest).expanduser().resolve().parent)


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


def resolve_media(base_dir: str, path: str) -> str:
    """A media path from the manifest → a local absolute path or an s3:// URI."""
    if fs.is_s3(path):
        return path
    if path.startswith("file://"):
        path = path[len("file://"):]
    if fs.is_s3(base_dir):
        if path.startswith("/"):
            return path
        return "s3://" + posixpath.normpath(posixpath.join(base_dir[len("s3://"):], path))
    candidate = Path(path).expanduser()
    return str(candidate if candidate.is_absolute() else Path(base_dir) / candidate)


def media_extension(path: str) -> str:
    suffix = posixpath.splitext(path.rstrip("/"))[1]
    return suffix.lower().lstrip(".")


class _ShardWriter:
    """Writes rows into size-capped shards, one row group per ``row_group_bytes`` of rows."""

    def __init__(self, out_uri: str, target_shard_bytes: int, row_group_bytes: int):
        self.out_uri = out_uri
        self.filesystem, self.root = fs.filesystem_for(out_uri)
        self.local = isinstance(self.filesystem, pafs.LocalFileSystem)
        if self.local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        self.target = int(target_shard_bytes)
        self.row_group_bytes = max(1, min(int(row_group_bytes), self.target))
        self.shards: list[dict] = []
        self._buffer: list[dict] = []
        self._buffer_bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._tmp_path: str | None = None
        self._rows = 0
        self._bytes = 0
        self._row_groups = 0
        self._finished_paths: list[str] = []

    def _open(self) -> None:
        name = shard_name(len(self.shards))
        if self.local:
            self._tmp_path = os.path.join(self.root, f".{name}.tmp-{os.getpid()}")
        else:
            handle, self._tmp_path = tempfile.mkstemp(prefix=".slm-shard-", suffix=".parquet")
            os.close(handle)
        self._writer = pq.ParquetWriter(
            self._tmp_path, SHARD_SCHEMA,
            compression={c: ("none" if c in MEDIA_MODALITIES else "zstd") for c in SHARD_SCHEMA.names},
            use_dictionary=["id", "prompt", "image_ext", "audio_ext", "video_ext"],
            write_statistics=["sample_id"],
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
            self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=SHARD_SCHEMA),
                                     row_group_size=len(self._buffer))
            self._row_groups += 1
        self._buffer, self._buffer_bytes = [], 0

    def _close_shard(self) -> None:
        if self._writer is None:
            return
        self._flush()
        self._writer.close()
        self._writer = None
        name = shard_name(len(self.shards))
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

    def finish(self) -> list[dict]:
        self._close_shard()
        return self.shards

    def abort(self) -> None:
        """Remove this run's temporary file and finished shards (best effort)."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001
                pass
        if self._tmp_path and os.path.exists(self._tmp_path):
            os.unlink(self._tmp_path)
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


def make_shards(manifest: str, out_uri: str, target_shard_bytes: float = DEFAULT_TARGET_SHARD_BYTES,
                strict: bool = False, *, row_group_bytes: float = DEFAULT_ROW_GROUP_BYTES,
                progress="stderr") -> DatasetSummary:
    """Pack ``manifest`` into Parquet shards under ``out_uri``; returns the written summary.

    Raises ``ManifestError`` for a bad manifest, or a missing media file when ``strict``.
    ``progress`` is a text stream for progress and warnings (default stderr; None: silent).
    """
    if progress == "stderr":
        progress = sys.stderr
    manifest = str(manifest)
    out_uri = str(out_uri).rstrip("/")
    if target_shard_bytes <= 0:
        raise ManifestError("target shard size must be positive")
    base_dir = _manifest_dir(manifest)
    stem = posixpath.splitext(posixpath.basename(manifest))[0] or "sample"
    summary = DatasetSummary()
    writer = _ShardWriter(out_uri, int(target_shard_bytes), int(row_group_bytes))
    meter = _Progress(progress)
    rows = skipped = 0
    try:
        for index, entry in enumerate(read_manifest(manifest)):
            record = entry.fields
            row = {"sample_id": rows, "id": record["id"] or f"{stem}-{index:08d}",
                   "text": record["text"], "prompt": record["prompt"]}
            size = len(row["text"].encode()) + len(row["prompt"].encode()) + len(row["id"])
            missing = None
            for modality in MEDIA_MODALITIES:
                row[modality] = row[f"{modality}_ext"] = None
                if not record[modality]:
                    continue
                location = resolve_media(base_dir, record[modality])
                try:
                    data = fs.read_bytes(location)
                except (FileNotFoundError, IsADirectoryError, PermissionError):
                    missing = (modality, record[modality])
                    break
                except OSError as exc:
                    if "not found" in str(exc).lower() or "nosuchkey" in str(exc).lower():
                        missing = (modality, record[modality])
                        break
                    raise
                row[modality] = data
                row[f"{modality}_ext"] = media_extension(location)
                size += len(data)
            problem = None
            if missing is not None:
                problem = f"missing {missing[0]} file {missing[1]}"
            elif not row["text"] and not any(row[m] is not None for m in MEDIA_MODALITIES):
                problem = "row has neither text nor media"
            if problem is not None:
                message = f"{manifest}:{entry.line}: {problem}"
                if strict:
                    raise ManifestError(message)
                skipped += 1
                if progress is not None:
                    print(f"warning: {message} (row skipped)", file=progress, flush=True)
                continue
            _count(summary, row)
            writer.add(row, size)
            rows += 1
            meter.update(rows, skipped, len(writer.shards), summary.bytes)
        summary.shards = writer.finish()
    except BaseException:
        writer.abort()
        raise
    summary.rows = rows
    summary.skipped_rows = skipped
    summary.bytes = sum(s["bytes"] for s in summary.shards)
    if rows == 0:
        writer.abort()
        raise ManifestError(f"{manifest}: no usable rows ({skipped} skipped)")
    write_summary(out_uri, summary)
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
    parser.add_argument("--strict", action="store_true", help="a missing media file is fatal")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        make_shards(args.manifest, args.out, args.target_shard_size, args.strict,
                    row_group_bytes=args.row_group_size, progress=None if args.quiet else sys.stderr)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
