"""What ``slm-make-shards`` packs from: a CSV/JSONL manifest or a WebDataset prefix of ``.tar`` shards.

Both give the same rows (the shard schema without ``sample_id``) and the same skip rules: a row
with neither text nor media is skipped as ``empty``, a media file over ``max_media_bytes`` as
``refused`` (``--strict``: fatal). A manifest's media paths are confined to its folder
(``media_paths.py``); a tar's members are its own, so there is nothing to confine. Entry indices
count samples in tar order over the tars sorted by name, so a resumed pack (``start_entry``)
continues where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from multimodal.data.manifest import ManifestError, iter_manifest_rows, read_manifest, skip_row
from multimodal.data.media_paths import DEFAULT_MAX_MEDIA_BYTES
from multimodal.data.schema import MEDIA_MODALITIES, DatasetSummary
from multimodal.data.webdataset import iter_tar_samples, list_tar_shards, tar_name

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".json")


def tar_source(source: str) -> list[str]:
    """The tars of ``source`` when it is a WebDataset prefix (or one ``.tar``), else ``[]``."""
    source = str(source)
    if source.lower().endswith(MANIFEST_SUFFIXES):
        return []
    try:
        return list_tar_shards(source)
    except (OSError, ValueError):
        return []


def iter_tar_rows(source: str, summary: DatasetSummary, *, strict: bool = False, progress=None,
                  max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES, start_entry: int = 0,
                  on_skip: Callable[[int, str], None] | None = None) -> Iterator[tuple[int, dict, int]]:
    """``(entry index, row, payload bytes)`` for every usable sample of the tars under ``source``."""
    tars = tar_source(source)
    if not tars:
        raise ManifestError(f"{source}: no .tar shards there")
    index = 0
    for tar_uri in tars:
        for row in iter_tar_samples(tar_uri):
            index += 1
            if index - 1 < start_entry:
                continue
            where = f"{tar_name(tar_uri)}:{row['id']}"
            media = {m: row[m] for m in MEDIA_MODALITIES if row[m] is not None}
            oversized = [m for m, data in media.items() if len(data) > max_media_bytes]
            if oversized:
                skip_row(summary, f"{where}: refused {oversized[0]} member: {len(media[oversized[0]])} bytes "
                         f"is over the limit of {max_media_bytes}", "refused", index - 1, strict=strict,
                         progress=progress, on_skip=on_skip)
                continue
            if not row["text"] and not media:
                skip_row(summary, f"{where}: sample has neither text nor media", "empty", index - 1,
                         strict=strict, progress=progress, on_skip=on_skip)
                continue
            size = len(row["text"].encode()) + len(row["prompt"].encode()) + len(row["id"])
            yield index - 1, row, size + sum(len(d) for d in media.values())


def iter_source_rows(source: str, summary: DatasetSummary, *, allow_outside_paths: bool = False,
                     **options) -> Iterator[tuple[int, dict, int]]:
    """Rows of a manifest (``iter_manifest_rows``) or of a WebDataset prefix (``iter_tar_rows``)."""
    if tar_source(source):
        return iter_tar_rows(source, summary, **options)
    return iter_manifest_rows(source, summary, allow_outside_paths=allow_outside_paths, **options)


def source_texts(source: str) -> Iterator[str]:
    """Every text and prompt of a manifest or a WebDataset prefix (to train a tokenizer on)."""
    if tar_source(source):
        rows = (row for tar_uri in tar_source(source) for row in iter_tar_samples(tar_uri))
    else:
        rows = (entry.fields for entry in read_manifest(source))
    for row in rows:
        for key in ("text", "prompt"):
            if row[key]:
                yield row[key]


__all__ = ["iter_source_rows", "iter_tar_rows", "source_texts", "tar_source"]
