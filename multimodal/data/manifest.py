"""The CSV/JSONL manifest ``slm-make-shards`` packs: its rows, and their media read as encoded bytes.

A CSV (header row) or JSONL file (``.jsonl``/``.ndjson``/``.json``) with a ``text`` column and
optional ``image``, ``audio``, ``video`` (paths relative to the manifest, or absolute paths /
``s3://`` URIs inside the manifest's folder or prefix), ``id`` and ``prompt`` columns. Media paths
are confined and size-capped by ``media_paths.py``; a row whose media are missing or refused is
skipped and counted by reason.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from multimodal import fs
from multimodal.data.media_paths import (
    DEFAULT_MAX_MEDIA_BYTES, MediaMissing, MediaRefused, manifest_dir, read_media, resolve_media,
)
from multimodal.data.schema import MEDIA_MODALITIES, DatasetSummary

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
            skip_row(summary, f"{manifest}:{entry.line}: {problem}", reason, index, strict=strict,
                     progress=progress, on_skip=on_skip)
            continue
        yield index, row, size


def skip_row(summary: DatasetSummary, message: str, reason: str, index: int, *, strict: bool,
             progress=None, on_skip: Callable[[int, str], None] | None = None) -> None:
    """Count a skipped row in ``summary`` by ``reason``, warn on ``progress``, tell ``on_skip``;
    with ``strict``, raise ``ManifestError(message)`` instead."""
    if strict:
        raise ManifestError(message)
    summary.skipped_rows += 1
    summary.skipped_by_reason[reason] = summary.skipped_by_reason.get(reason, 0) + 1
    if on_skip is not None:
        on_skip(index, reason)
    if progress is not None:
        print(f"warning: {message} (row skipped)", file=progress, flush=True)


__all__ = ["ManifestError", "ManifestRow", "read_manifest", "iter_manifest_rows", "media_extension",
           "skip_row", "MANIFEST_COLUMNS", "JSONL_SUFFIXES"]
