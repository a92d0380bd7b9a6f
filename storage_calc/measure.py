"""Measure a dataset instead of assuming: list a local folder or ``s3://bucket/prefix``.

Paginated listings only, never a request per object: a non-recursive listing of the prefix (which
also finds a ``_dataset.json`` shard summary, if ``slm-make-shards`` wrote one); while there are
few sub-folders, one more non-recursive level of them; then one recursive listing per sub-folder,
run concurrently (pyarrow pages through ListObjectsV2 itself, 1,000 keys a page, and releases the
GIL). About one request per 1,000 objects plus one per folder expanded. Files are grouped by
extension. With a shard summary, its per-modality counts and bytes are used and the shards are not
listed at all.

The S3 endpoint and credentials come from the standard AWS environment (see ``multimodal.fs``).
Importing this module imports neither torch nor Ray (pyarrow is imported on first use).
"""

from __future__ import annotations

import json
import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from storage_calc.estimate import MODALITIES

SUMMARY_NAME = "_dataset.json"
#: Fewer retries and a shorter connect timeout than data loading: an unreachable endpoint
#: should be reported in seconds, not after minutes of back-off.
LISTING_RETRIES = 3
LISTING_CONNECT_TIMEOUT_S = 5.0
LISTING_REQUEST_TIMEOUT_S = 60.0
LISTING_THREADS = 16
#: Folder levels expanded one at a time before the per-folder recursive listings start.
EXPAND_DEPTH = 3

EXTENSIONS: dict[str, frozenset[str]] = {
    "text": frozenset({".txt", ".json", ".jsonl", ".csv", ".md"}),
    "image": frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}),
    "audio": frozenset({".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus"}),
    "video": frozenset({".mp4", ".webm", ".avi", ".mkv", ".mov"}),
}
#: Compression suffixes looked through: ``a.jsonl.gz`` is text.
COMPRESSION = frozenset({".gz", ".zst", ".bz2", ".xz"})


class MeasureError(Exception):
    """The location cannot be measured (missing, unreachable, empty); message is one line."""


@dataclass(frozen=True)
class ModalityStats:
    """How many samples (or objects) of one modality and their bytes."""

    count: int = 0
    bytes: int = 0

    @property
    def avg_bytes(self) -> float:
        return self.bytes / self.count if self.count else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "bytes": self.bytes, "avg_bytes": self.avg_bytes}


@dataclass(frozen=True)
class Measurement:
    """What is stored at ``uri``: per-modality counts and bytes, and the total.

    ``source`` is ``"listing"`` (objects grouped by extension; ``other`` holds the rest),
    ``"shard-summary"`` (counts and bytes read from ``_dataset.json``; ``shards`` is set) or
    ``"tar-index"`` (WebDataset tars indexed, ``data/tar_index.py``).
    """

    uri: str
    source: str
    modalities: dict[str, ModalityStats]
    total_bytes: int
    objects: int
    seconds: float
    shards: int | None = None
    rows: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: what the prefix holds: "raw" (shards of encoded media), "predecoded" (slm-make-shards
    #: --decode; ``decoded_preset`` names the spec), "webdataset" (.tar shards, indexed) or
    #: "files" (no shard summary: a listing)
    kind: str = "files"
    decoded_preset: str | None = None

    def describe_kind(self) -> str:
        """One phrase for the report: which kind of data the prefix holds."""
        if self.kind == "predecoded":
            return f"pre-decoded shards ({self.decoded_preset} spec: samples stored decoded)"
        if self.kind == "webdataset":
            return "WebDataset tars (media stored encoded, read in place; indexed for this estimate)"
        if self.kind == "raw":
            return "raw shards (media stored encoded, decoded while training)"
        return "media files (not packed into shards)"

    def count(self, modality: str) -> int:
        stats = self.modalities.get(modality)
        return stats.count if stats else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "uri": self.uri, "source": self.source, "total_bytes": self.total_bytes,
            "objects": self.objects, "shards": self.shards, "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "modalities": {k: v.to_dict() for k, v in self.modalities.items()},
            "notes": list(self.notes), "kind": self.kind, "decoded_preset": self.decoded_preset,
        }


def modality_of(path: str) -> str:
    """``text``/``image``/``audio``/``video`` from a file name's extension, else ``other``."""
    name = posixpath.basename(path).lower()
    stem, ext = posixpath.splitext(name)
    if ext in COMPRESSION:
        ext = posixpath.splitext(stem)[1]
    for modality, extensions in EXTENSIONS.items():
        if ext in extensions:
            return modality
    return "other"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _filesystem(uri: str):
    from multimodal.fs import filesystem_for, is_s3, s3_filesystem

    if is_s3(uri):
        path = uri[len("s3://"):].strip("/")
        if not path:
            raise MeasureError(f"{uri!r} names no bucket; use s3://bucket/prefix")
        fs = s3_filesystem(retries=LISTING_RETRIES, connect_timeout=LISTING_CONNECT_TIMEOUT_S,
                           request_timeout=LISTING_REQUEST_TIMEOUT_S)
        return fs, path
    try:
        return filesystem_for(uri)
    except ValueError as exc:
        raise MeasureError(str(exc)) from None


def _not_found(fs, path: str, uri: str) -> str:
    """Why ``path`` was not found: a missing bucket, an empty prefix, or no such local folder."""
    import pyarrow.fs as pafs

    if not uri.startswith("s3://"):
        return f"{uri}: no such file or folder"
    bucket = path.split("/", 1)[0]
    try:
        bucket_missing = fs.get_file_info(bucket).type == pafs.FileType.NotFound
    except OSError:
        bucket_missing = False
    if bucket_missing:
        return f"{uri}: bucket {bucket!r} does not exist"
    return f"{uri}: no objects under this prefix"


def _nonneg_int(value: Any) -> int:
    """``value`` as an int >= 0, or 0 when missing or malformed (summaries are read defensively)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return 0
    return int(value)


def parse_summary(data: Any) -> dict[str, Any] | None:
    """Per-modality counts/bytes, shard count and total bytes from a ``_dataset.json`` document.

    Returns None when the document has no usable ``modalities`` section.
    """
    if not isinstance(data, dict) or not isinstance(data.get("modalities"), dict):
        return None
    modalities: dict[str, ModalityStats] = {}
    for modality in MODALITIES:
        entry = data["modalities"].get(modality)
        entry = entry if isinstance(entry, dict) else {}
        modalities[modality] = ModalityStats(_nonneg_int(entry.get("count")),
                                             _nonneg_int(entry.get("bytes")))
    shards = data.get("shards") if isinstance(data.get("shards"), list) else []
    shard_bytes = sum(_nonneg_int(s.get("bytes")) for s in shards if isinstance(s, dict))
    total = (_nonneg_int(data.get("bytes")) or shard_bytes
             or sum(stats.bytes for stats in modalities.values()))
    rows = data.get("rows")
    decoded = data.get("decoded") if isinstance(data.get("decoded"), dict) else None
    return {"modalities": modalities, "shards": len(shards), "total_bytes": total,
            "rows": _nonneg_int(rows) if rows is not None else None,
            "kind": "predecoded" if decoded else "webdataset" if data.get("format") == "webdataset" else "raw",
            "decoded_preset": str(decoded.get("preset", "?")) if decoded else None}


def measure(uri: str, *, threads: int = LISTING_THREADS) -> Measurement:
    """List ``uri`` (a local folder or ``s3://bucket/prefix``) and group what is there by modality.

    Raises ``MeasureError`` with a one-line message when the location does not exist, cannot be
    reached or holds nothing.
    """
    import pyarrow.fs as pafs

    uri = str(uri)
    started = time.monotonic()
    fs, path = _filesystem(uri)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise MeasureError(_not_found(fs, path, uri))
        if info.type == pafs.FileType.File:
            files = [info]
        else:
            top = fs.get_file_info(pafs.FileSelector(path, recursive=False))
            summary = next((f for f in top if f.type == pafs.FileType.File
                            and f.base_name == SUMMARY_NAME), None)
            notes: list[str] = []
            if summary is not None:
                result = _read_summary(fs, summary.path, uri, started, notes)
                if result is not None:
                    return result
            files = [f for f in top if f.type == pafs.FileType.File]
            if any(f.base_name.endswith(".tar") for f in files):
                return _from_tars(uri, started)
            folders = [f.path for f in top if f.type == pafs.FileType.Directory]
            with ThreadPoolExecutor(max(1, threads)) as pool:
                # Breadth-first: while there are few folders, list them one level down (their
                # files are kept) so the recursive listings below can run in parallel.
                depth = 1
                while folders and len(folders) < 2 * threads and depth < EXPAND_DEPTH:
                    listings = pool.map(fs.get_file_info, [pafs.FileSelector(d) for d in folders])
                    folders = []
                    for listing in listings:
                        files.extend(f for f in listing if f.type == pafs.FileType.File)
                        folders.extend(f.path for f in listing if f.type == pafs.FileType.Directory)
                    depth += 1
                selectors = [pafs.FileSelector(d, recursive=True) for d in folders]
                for listing in pool.map(fs.get_file_info, selectors):
                    files.extend(f for f in listing if f.type == pafs.FileType.File)
            return _from_listing(files, uri, started, notes)
        return _from_listing(files, uri, started, [])
    except MeasureError:
        raise
    except FileNotFoundError:
        raise MeasureError(_not_found(fs, path, uri)) from None
    except (OSError, ValueError) as exc:
        raise MeasureError(f"cannot list {uri}: {_one_line(exc)}") from None


def _read_summary(fs, summary_path: str, uri: str, started: float,
                  notes: list[str]) -> Measurement | None:
    try:
        with fs.open_input_stream(summary_path) as stream:
            data = json.loads(stream.read())
        parsed = parse_summary(data)
    except (OSError, ValueError) as exc:
        notes.append(f"ignored unreadable {SUMMARY_NAME}: {_one_line(exc)}")
        return None
    if parsed is None:
        notes.append(f"ignored {SUMMARY_NAME} without a 'modalities' section; listed the objects")
        return None
    return from_summary(uri, data, started, tuple(notes))


def from_summary(uri: str, data: dict, started: float | None = None, notes: tuple[str, ...] = (),
                 source: str = "shard-summary") -> Measurement:
    """A ``Measurement`` from a ``_dataset.json`` document (or a tar index, ``data/tar_index.py``:
    ``source="tar-index"``)."""
    parsed = parse_summary(data)
    if parsed is None:
        raise MeasureError(f"{uri}: the shard summary has no 'modalities' section")
    return Measurement(uri=uri, source=source, modalities=dict(parsed["modalities"]),
                       total_bytes=parsed["total_bytes"], objects=parsed["shards"],
                       seconds=time.monotonic() - started if started else 0.0, shards=parsed["shards"],
                       rows=parsed["rows"], notes=tuple(notes), kind=parsed["kind"],
                       decoded_preset=parsed["decoded_preset"])


def _from_tars(uri: str, started: float) -> Measurement:
    """A prefix of WebDataset tars: index them (img2dataset's stats, else the tars' members)."""
    import sys

    from multimodal.data.tar_index import TarIndexError, index_prefix

    try:
        summary = index_prefix(uri, progress=sys.stderr)
    except TarIndexError as exc:
        raise MeasureError(str(exc)) from None
    source = summary.created_by.split("(", 1)[-1].rstrip(")")
    return from_summary(uri, summary.to_dict(), started, (f"WebDataset tars indexed from {source}",), "tar-index")


def _from_listing(files: list, uri: str, started: float, notes: list[str]) -> Measurement:
    counts = {m: 0 for m in (*MODALITIES, "other")}
    sizes = dict.fromkeys(counts, 0)
    for info in files:
        modality = modality_of(info.path)
        counts[modality] += 1
        sizes[modality] += info.size or 0
    if not files:
        raise MeasureError(f"{uri}: no objects found")
    modalities = {m: ModalityStats(counts[m], sizes[m]) for m in counts}
    return Measurement(uri=uri, source="listing", modalities=modalities,
                       total_bytes=sum(sizes.values()), objects=len(files),
                       seconds=time.monotonic() - started, notes=tuple(notes))
