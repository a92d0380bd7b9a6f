"""``slm-make-shards SOURCE --out URI``: pack a corpus into Parquet shards plus ``_dataset.json``.

SOURCE is a manifest or a WebDataset prefix of ``.tar`` shards (``sources.py``: ``000000.jpg``,
``000000.txt`` ... as ``webdataset.ShardWriter`` or img2dataset write them). The manifest is a CSV (header row) or JSONL file (``.jsonl``/``.ndjson``/``.json``) with a
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
import sys

from multimodal.config import PRESETS
from multimodal.data.failure_rate import DatasetBrokenError
from multimodal.data.manifest import (  # noqa: F401  (re-exported: the manifest API lived here)
    JSONL_SUFFIXES, MANIFEST_COLUMNS, ManifestError, ManifestRow, iter_manifest_rows, media_extension,
    read_manifest,
)
from multimodal.data.media_paths import DEFAULT_MAX_MEDIA_BYTES
from multimodal.data.schema import ALL_MODALITIES, MEDIA_MODALITIES, DatasetSummary, write_summary
from multimodal.data.sources import iter_source_rows
from multimodal.data.shard_writer import (  # noqa: F401  (re-exported)
    Progress, ShardWriter, claim_output, existing_files, remove_replaced,
)

DEFAULT_TARGET_SHARD_BYTES = 256_000_000
DEFAULT_ROW_GROUP_BYTES = 32_000_000


def make_shards(manifest: str, out_uri: str, target_shard_bytes: float = DEFAULT_TARGET_SHARD_BYTES,
                strict: bool = False, *, row_group_bytes: float = DEFAULT_ROW_GROUP_BYTES,
                progress="stderr", overwrite: bool = False, allow_outside_paths: bool = False,
                max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES) -> DatasetSummary:
    """Pack ``manifest`` (or a WebDataset prefix) into Parquet shards under ``out_uri``; returns
    the written summary.

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
    name_tag, previous = claim_output(out_uri, overwrite)
    summary = DatasetSummary()
    writer = ShardWriter(out_uri, int(target_shard_bytes), int(row_group_bytes), name_tag)
    meter = Progress(progress)
    rows = 0
    try:
        for _, row, size in iter_source_rows(manifest, summary, strict=strict, progress=progress,
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
    remove_replaced(out_uri, previous, summary, progress)
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
        description="Pack a CSV/JSONL manifest of text + image/audio/video files, or a WebDataset prefix "
                    "of .tar shards, into Parquet shards "
                    "(media kept as encoded bytes) with a _dataset.json summary, locally or on S3 "
                    "(endpoint and credentials from the AWS_* environment).")
    parser.add_argument("manifest", metavar="SOURCE",
                        help="CSV or JSONL manifest, or a folder/prefix of WebDataset .tar shards "
                             "(local path or s3:// URI)")
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
