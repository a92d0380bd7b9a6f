"""An index of a WebDataset tar prefix: samples, per-modality presence and bytes, per tar.

A prefix of ``.tar`` shards as the ``webdataset`` package's ``ShardWriter`` (or img2dataset,
OpenCLIP tooling, ``tar --sort=name``) writes them has no ``_dataset.json``; training needs the
sample count per shard (step plan, mid-epoch resume) and the storage estimate needs the bytes per
modality. ``index_prefix`` gets them by streaming each tar's members (grouped by key as
``webdataset.py`` maps them), or, where img2dataset wrote ``<shard>_stats.json`` beside every tar,
from those (no tar is read then; counts come from its ``successes``).

The index is a ``DatasetSummary`` (``format: "webdataset"``) plus an ``index`` section naming the
prefix and each tar's size, so a cached copy (``cache_uri``: the run's own storage, never the
user's prefix) is reused while the listing is unchanged and rebuilt when a tar changes.
"""

from __future__ import annotations

import json
import posixpath
import sys
import time
from collections.abc import Iterator

import pyarrow.fs as pafs

from multimodal import fs
from multimodal.data.schema import ALL_MODALITIES, MEDIA_MODALITIES, DatasetSummary
from multimodal.data.webdataset import iter_tar_samples, list_tar_shards, tar_name

INDEX_FORMAT = "webdataset"
STATS_SUFFIX = "_stats.json"


class TarIndexError(ValueError):
    """The prefix holds no tars, or a tar cannot be read; the message is one line."""


def tar_sizes(prefix: str) -> dict[str, int]:
    """``{tar name: bytes}`` of the ``.tar`` shards under ``prefix`` (one listing), sorted by name."""
    filesystem, path = fs.filesystem_for(prefix)
    if prefix.endswith(".tar"):
        info = filesystem.get_file_info(path)
        return {tar_name(prefix): int(info.size or 0)} if info.type == pafs.FileType.File else {}
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {i.base_name: int(i.size or 0) for i in sorted(infos, key=lambda i: i.base_name)
            if i.type == pafs.FileType.File and i.base_name.endswith(".tar")}


def is_tar_prefix(uri: str) -> bool:
    """True when ``uri`` is a ``.tar`` or a folder/prefix holding ``.tar`` shards."""
    try:
        return bool(list_tar_shards(str(uri)))
    except (OSError, ValueError):
        return False


def _empty_modalities() -> dict[str, dict[str, int]]:
    return {m: {"count": 0, "bytes": 0} for m in ALL_MODALITIES}


def index_tar(uri: str) -> dict:
    """One shard's entry: ``{path, rows, bytes, modalities, empty}`` from streaming its members
    (``rows`` counts every key, as the training pipeline reads them; ``empty`` those with neither
    text nor media)."""
    entry = {"path": tar_name(uri), "rows": 0, "bytes": 0, "modalities": _empty_modalities(), "empty": 0}
    for row in iter_tar_samples(uri):
        entry["rows"] += 1
        usable = False
        if row["text"]:
            entry["modalities"]["text"]["count"] += 1
            entry["modalities"]["text"]["bytes"] += len(row["text"].encode())
            usable = True
        for modality in MEDIA_MODALITIES:
            if row[modality] is not None:
                entry["modalities"][modality]["count"] += 1
                entry["modalities"][modality]["bytes"] += len(row[modality])
                usable = True
        entry["empty"] += int(not usable)
    return entry


def _stats_entries(prefix: str, sizes: dict[str, int]) -> list[dict] | None:
    """Shard entries from img2dataset's ``<stem>_stats.json`` files, or None unless every tar has one."""
    entries = []
    for name, size in sizes.items():
        stats_uri = fs.join(prefix.rstrip("/"), posixpath.splitext(name)[0] + STATS_SUFFIX)
        try:
            stats = json.loads(fs.read_bytes(stats_uri).decode())
            rows = int(stats["successes"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        modalities = _empty_modalities()
        modalities["image"] = {"count": rows, "bytes": size}  # img2dataset: one image per sample
        entries.append({"path": name, "rows": rows, "bytes": size, "modalities": modalities, "empty": 0})
    return entries


def _summary(prefix: str, sizes: dict[str, int], entries: list[dict], source: str) -> DatasetSummary:
    summary = DatasetSummary(format=INDEX_FORMAT, created_by=f"slm tar index ({source})")
    for entry in entries:
        entry["bytes"] = sizes[entry["path"]]
        for modality in ALL_MODALITIES:
            for key in ("count", "bytes"):
                summary.modalities[modality][key] += entry["modalities"][modality][key]
    summary.shards = entries
    summary.rows = sum(e["rows"] for e in entries)
    summary.bytes = sum(sizes.values())
    summary.skipped_by_reason = {"empty": sum(e["empty"] for e in entries)}
    return summary


def _iter_entries(prefix: str, sizes: dict[str, int], progress) -> Iterator[dict]:
    started, total = time.monotonic(), sum(sizes.values())
    done = 0
    for number, name in enumerate(sizes, start=1):
        try:
            entry = index_tar(fs.join(prefix.rstrip("/"), name) if not prefix.endswith(".tar") else prefix)
        except (OSError, EOFError) as exc:
            raise TarIndexError(f"{prefix}: cannot read tar {name}: {str(exc).splitlines()[0]}") from None
        except Exception as exc:  # tarfile.ReadError and friends: a damaged tar
            raise TarIndexError(f"{prefix}: {name} is not a readable tar ({type(exc).__name__}: {exc})") from None
        done += sizes[name]
        if progress is not None:
            rate = done / 1e6 / max(time.monotonic() - started, 1e-9)
            print(f"indexed tar {number}/{len(sizes)} {name}: {entry['rows']} samples "
                  f"({done / 1e6:.1f}/{total / 1e6:.1f} MB, {rate:.1f} MB/s)", file=progress, flush=True)
        yield entry


def index_prefix(prefix: str, cache_uri: str | None = None, progress="stderr") -> DatasetSummary:
    """The index of the tars under ``prefix`` (see the module docstring). ``cache_uri``: a JSON
    file to reuse (when it indexes the same tars of the same sizes) or write. ``progress``: a text
    stream (default stderr; None: silent)."""
    progress = sys.stderr if progress == "stderr" else progress
    prefix = str(prefix).rstrip("/")
    sizes = tar_sizes(prefix)
    if not sizes:
        raise TarIndexError(f"{prefix}: no .tar shards there")
    cached = _read_cache(cache_uri, prefix, sizes)
    if cached is not None:
        return cached
    entries = _stats_entries(prefix, sizes) if not prefix.endswith(".tar") else None
    source = "img2dataset stats" if entries is not None else "tar headers"
    if entries is None:
        entries = list(_iter_entries(prefix, sizes, progress))
    summary = _summary(prefix, sizes, entries, source)
    if cache_uri:
        document = {**summary.to_dict(), "index": {"prefix": prefix, "tars": sizes, "source": source}}
        fs.write_bytes_atomic(cache_uri, json.dumps(document, indent=1).encode())
    return summary


def _read_cache(cache_uri: str | None, prefix: str, sizes: dict[str, int]) -> DatasetSummary | None:
    if not cache_uri or not fs.exists(cache_uri):
        return None
    try:
        document = json.loads(fs.read_bytes(cache_uri).decode())
        index = document.get("index") or {}
        if index.get("prefix") != prefix or index.get("tars") != sizes:
            return None
        return DatasetSummary.from_dict(document)
    except (OSError, ValueError, AttributeError):
        return None


def is_index(summary) -> bool:
    """True for a ``DatasetSummary`` made by ``index_prefix`` (a tar prefix, not packed shards)."""
    return getattr(summary, "format", None) == INDEX_FORMAT


__all__ = ["index_prefix", "index_tar", "is_tar_prefix", "is_index", "tar_sizes", "TarIndexError",
           "INDEX_FORMAT"]
