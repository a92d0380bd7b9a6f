"""The Parquet shard schema and the ``_dataset.json`` summary beside the shards.

One row per sample. Media are kept as their original encoded bytes (JPEG, FLAC, MP4 ...) with the
original file extension beside them, so nothing is re-encoded and the decoders can use the
extension as a hint. A missing modality is a null.

| column       | type    | meaning                                                         |
|--------------|---------|-----------------------------------------------------------------|
| ``sample_id``| int64   | row number in the whole dataset (0 .. rows-1), unique           |
| ``id``       | string  | the manifest's ``id`` (or ``<manifest stem>-<row>`` when absent) |
| ``text``     | string  | the caption / text ("" allowed when media are present)           |
| ``prompt``   | string  | optional prompt put before the text (no loss on it), "" if none  |
| ``image``    | binary  | encoded image bytes or null                                     |
| ``image_ext``| string  | original extension without the dot (``jpg``, ``png`` ...) or null |
| ``audio``/``audio_ext``, ``video``/``video_ext``: the same for audio and video            |

``_dataset.json`` (``DatasetSummary``) lists the shards in order; a shard's index in that list is
the ``shard_id`` the pipeline attaches to every row.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from multimodal import fs

SCHEMA_VERSION = 1
MAX_READ_SCHEMA_VERSION = 2  # 2: pre-decoded shards (data/predecoded.py)
SUMMARY_NAME = "_dataset.json"
MEDIA_MODALITIES: tuple[str, ...] = ("image", "audio", "video")
ALL_MODALITIES: tuple[str, ...] = ("text",) + MEDIA_MODALITIES

SHARD_SCHEMA = pa.schema([
    pa.field("sample_id", pa.int64(), nullable=False),
    pa.field("id", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("image", pa.binary()),
    pa.field("image_ext", pa.string()),
    pa.field("audio", pa.binary()),
    pa.field("audio_ext", pa.string()),
    pa.field("video", pa.binary()),
    pa.field("video_ext", pa.string()),
], metadata={b"slm.schema_version": str(SCHEMA_VERSION).encode()})

SHARD_COLUMNS: tuple[str, ...] = tuple(SHARD_SCHEMA.names)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


@dataclass
class DatasetSummary:
    """What ``_dataset.json`` holds. ``storage_calc --from`` reads exactly these keys."""

    schema_version: int = SCHEMA_VERSION
    # [{"path": "shard-00000.parquet", "rows", "bytes", "row_groups"}] ("row_groups" may be absent)
    shards: list[dict] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0
    modalities: dict[str, dict[str, int]] = field(
        default_factory=lambda: {m: {"count": 0, "bytes": 0} for m in ALL_MODALITIES})
    skipped_rows: int = 0
    # why rows were skipped: {"missing": n, "refused": n, "empty": n} (absent in older summaries)
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    format: str = "parquet"
    created_by: str = "slm-make-shards"
    # pre-decoded shards only (data/predecoded.py): {"preset", "media_spec", "tokenizer",
    # "tokenizer_sha256", "audio_dtype", "bad": {modality: n}}; None for raw shards
    decoded: dict | None = None

    @property
    def shard_names(self) -> list[str]:
        return [s["path"] for s in self.shards]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> "DatasetSummary":
        version = int(data.get("schema_version", 0))
        if version > MAX_READ_SCHEMA_VERSION:
            raise ValueError(f"dataset summary has schema_version {version}; this code reads up to "
                             f"{MAX_READ_SCHEMA_VERSION}")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        summary = cls(**known)
        for modality in ALL_MODALITIES:
            summary.modalities.setdefault(modality, {"count": 0, "bytes": 0})
        return summary


def summary_uri(uri: str) -> str:
    """The ``_dataset.json`` of a shard prefix (or ``uri`` itself when it names the file)."""
    uri = str(uri)
    return uri if uri.rstrip("/").endswith(SUMMARY_NAME) else fs.join(uri, SUMMARY_NAME)


def dataset_root(uri: str) -> str:
    """The shard prefix of ``uri`` (strips a trailing ``_dataset.json``)."""
    uri = str(uri).rstrip("/")
    if uri.endswith("/" + SUMMARY_NAME):
        return uri[: -len(SUMMARY_NAME) - 1]
    return uri


def write_summary(uri: str, summary: DatasetSummary) -> str:
    """Write ``summary`` atomically as ``<uri>/_dataset.json``; returns its URI."""
    target = summary_uri(uri)
    fs.write_bytes_atomic(target, summary.to_json().encode())
    return target


def read_summary(uri: str) -> DatasetSummary | None:
    """The summary of the shard prefix ``uri`` (or of the ``_dataset.json`` it names), None if absent."""
    target = summary_uri(uri)
    if not fs.exists(target):
        return None
    return DatasetSummary.from_dict(json.loads(fs.read_bytes(target).decode()))


__all__ = ["SCHEMA_VERSION", "SUMMARY_NAME", "SHARD_SCHEMA", "SHARD_COLUMNS", "MEDIA_MODALITIES",
           "ALL_MODALITIES", "DatasetSummary", "read_summary", "write_summary", "summary_uri",
           "dataset_root", "shard_name"]
