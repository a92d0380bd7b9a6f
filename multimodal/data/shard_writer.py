"""Writing Parquet shards: size-capped shards in row groups, atomic on local disk and S3, and the
rule that an existing dataset is never damaged (``claim_output``, ``remove_replaced``)."""

from __future__ import annotations

import os
import posixpath
import secrets
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from multimodal import fs
from multimodal.data.manifest import ManifestError
from multimodal.data.schema import MEDIA_MODALITIES, SHARD_SCHEMA, DatasetSummary, read_summary, shard_name


class ShardWriter:
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


class RateLimited:
    """A progress printer that speaks at most every ``every_s`` seconds (``force``: now)."""

    def __init__(self, stream, every_s: float = 2.0):
        self.stream, self.every_s = stream, every_s
        self.start = self.last = time.monotonic()

    def due(self, force: bool = False) -> bool:
        now = time.monotonic()
        if self.stream is None or (not force and now - self.last < self.every_s):
            return False
        self.last = now
        return True

    def rate(self, count: int) -> float:
        return count / max(time.monotonic() - self.start, 1e-9)


class Progress(RateLimited):
    def update(self, rows: int, skipped: int, shards: int, nbytes: int, force: bool = False) -> None:
        if self.due(force):
            print(f"packed {rows} rows ({nbytes / 1e6:.1f} MB, {shards} shard(s) done), "
                  f"skipped {skipped}, {self.rate(rows):.0f} rows/s", file=self.stream, flush=True)


def delete_quietly(out_uri: str, names: Sequence[str]) -> int:
    """Delete ``names`` (plain file names, nothing with a ``/``) under ``out_uri``, best effort;
    returns how many were deleted."""
    filesystem, root = fs.filesystem_for(out_uri)
    deleted = 0
    for name in names:
        if not name or "/" in name:
            continue
        try:
            filesystem.delete_file(posixpath.join(root, name))
            deleted += 1
        except OSError:
            pass
    return deleted


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


def claim_output(out_uri: str, overwrite: bool) -> tuple[str, DatasetSummary | None]:
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


def remove_replaced(out_uri: str, previous: DatasetSummary | None, summary: DatasetSummary,
                     progress) -> None:
    """After the new summary is published: delete the old summary's shards (best effort)."""
    if previous is None:
        return
    keep = set(summary.shard_names)
    removed = delete_quietly(out_uri, [n for n in previous.shard_names if n not in keep and not n.startswith(".")])
    if progress is not None:
        print(f"replaced the previous dataset ({removed} old shard(s) removed)", file=progress, flush=True)


__all__ = ["ShardWriter", "Progress", "RateLimited", "delete_quietly", "existing_files", "claim_output", "remove_replaced"]
