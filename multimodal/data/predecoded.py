"""Pre-decoded shards: samples stored already decoded to one preset's ``MediaSpec``.

``slm-make-shards MANIFEST --out URI --decode PRESET`` (``pack_decoded.py``) runs the project's one
decode path (``SampleProcessor`` in ``pipeline.py`` over ``decode.py``'s compact decoders) once,
offline, and stores its output here; training then only reads and copies. One row per sample:

| column         | type   | value                                                               |
|----------------|--------|---------------------------------------------------------------------|
| ``sample_id``  | int64  | unique per sample (the row number in the dataset)                   |
| ``id``/``text``/``prompt`` | string | as in raw shards (kept for evaluation and tokenizer training) |
| ``tokens``     | binary | int32 ids of ``<bos> prompt text <eos>``, cut to ``max_text_tokens``, unpadded |
| ``label_start``| int32  | index of the first labelled token (1 + prompt tokens)               |
| ``image``      | binary | uint8 RGB ``[3, S, S]``; empty when absent or bad                    |
| ``audio``      | binary | **float16** log-mel ``[n_mels, T]``; empty when absent or bad        |
| ``video``      | binary | uint8 RGB ``[F, 3, V, V]``; empty when absent or bad                 |
| ``bad_<m>``    | bool   | the sample had that modality but it failed to decode when packed     |
| ``sample_valid``| bool  | as the pipeline's (False: kept, counted, dropped by the loader)      |

``_dataset.json`` says so in ``decoded`` (``DatasetSummary.decoded``): the preset, the full
``media_spec``, the tokenizer file beside the shards and its SHA-256. ``check_spec`` refuses a
model whose spec differs (one line naming both). ``PredecodedUnitReader`` (run by the pipeline's
``read_predecoded_units`` tasks) reads a row group and turns it into the pipeline's wire rows (``wire.py``):
pixel columns pass through as they are, audio goes float16 → float32, the text keys are rebuilt
from the token ids with numpy. No media decoder runs.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa

from multimodal.batch import IGNORE_INDEX, MODALITIES, PAD_ID, present_key
from multimodal.config import MediaSpec

FORMAT = "predecoded"
PREDECODED_SCHEMA_VERSION = 2
AUDIO_DTYPE = np.float16
STORED_DTYPES: dict[str, type] = {"image": np.uint8, "audio": AUDIO_DTYPE, "video": np.uint8}

PREDECODED_SCHEMA = pa.schema([
    pa.field("sample_id", pa.int64(), nullable=False),
    pa.field("id", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("tokens", pa.binary(), nullable=False),
    pa.field("label_start", pa.int32(), nullable=False),
    pa.field("image", pa.binary(), nullable=False),
    pa.field("audio", pa.binary(), nullable=False),
    pa.field("video", pa.binary(), nullable=False),
    pa.field("bad_image", pa.bool_(), nullable=False),
    pa.field("bad_audio", pa.bool_(), nullable=False),
    pa.field("bad_video", pa.bool_(), nullable=False),
    pa.field("sample_valid", pa.bool_(), nullable=False),
], metadata={b"slm.format": FORMAT.encode(), b"slm.schema_version": str(PREDECODED_SCHEMA_VERSION).encode()})
READ_COLUMNS: tuple[str, ...] = ("sample_id", "tokens", "label_start", *MODALITIES,
                                 *(f"bad_{m}" for m in MODALITIES), "sample_valid")
TEXT_COLUMNS: tuple[str, ...] = ("id", "text", "prompt", "tokens")


class SpecMismatchError(ValueError):
    """Pre-decoded shards made for another ``MediaSpec`` than the model's."""


def is_predecoded(summary) -> bool:
    """True when a ``DatasetSummary`` describes pre-decoded shards."""
    return bool(getattr(summary, "decoded", None))


def describe_spec(spec: MediaSpec | dict) -> str:
    """A short, one-line description of a media spec (every field)."""
    values = spec.model_dump() if isinstance(spec, MediaSpec) else dict(spec)
    return "{" + ", ".join(f"{k}={v}" for k, v in values.items()) + "}"


def check_spec(summary, spec: MediaSpec, uri: str, model_name: str) -> None:
    """Raise ``SpecMismatchError`` (one line naming both specs) unless the pre-decoded dataset
    ``summary`` was made for ``spec``; raw datasets pass."""
    if not is_predecoded(summary):
        return
    stored = MediaSpec.model_validate(summary.decoded["media_spec"])
    if stored == spec:
        return
    differ = [k for k in spec.model_dump() if getattr(stored, k) != getattr(spec, k)]
    raise SpecMismatchError(
        f"{uri} was pre-decoded for preset {summary.decoded.get('preset', '?')} "
        f"{describe_spec(stored)} but the model {model_name} needs {describe_spec(spec)} "
        f"(differ: {', '.join(differ)}); re-pack with 'slm-make-shards MANIFEST --out NEW_URI "
        f"--decode {model_name}' or train the preset the shards were made for")


def tokenizer_uri(uri: str, summary) -> str:
    """The tokenizer file a pre-decoded dataset was tokenized with."""
    from multimodal import fs
    from multimodal.data.schema import dataset_root

    return fs.join(dataset_root(uri), summary.decoded["tokenizer"])


def dataset_tokenizer(uri: str | None) -> str | None:
    """The tokenizer URI of a pre-decoded dataset at ``uri``; None for raw data or no data."""
    from multimodal.data.schema import read_summary

    if not uri or str(uri).endswith(".tar"):
        return None
    try:
        summary = read_summary(uri)
    except (OSError, ValueError):
        return None
    return tokenizer_uri(uri, summary) if is_predecoded(summary) else None


def tokenizer_sha256(tokenizer_json: str) -> str:
    return hashlib.sha256(tokenizer_json.encode()).hexdigest()


# --- writing (packing) -------------------------------------------------------------------
def encode_rows(rows: Sequence[dict], columns: dict[str, np.ndarray],
                media: dict[str, Sequence[np.ndarray | None]]) -> list[dict]:
    """Pre-decoded rows (dicts in ``PREDECODED_SCHEMA``) from ``SampleProcessor.decode_compact``'s
    output for ``rows`` (raw rows: ``sample_id``, ``id``, ``text``, ``prompt``, media bytes)."""
    lengths = columns["attention_mask"].sum(axis=1)
    labelled = columns["labels"] != IGNORE_INDEX
    label_start = np.where(labelled.any(axis=1), labelled.argmax(axis=1), lengths)
    out = []
    for i, row in enumerate(rows):
        record = {"sample_id": int(row["sample_id"]), "id": row.get("id") or "",
                  "text": row.get("text") or "", "prompt": row.get("prompt") or "",
                  "tokens": columns["input_ids"][i, :lengths[i]].astype(np.int32).tobytes(),
                  "label_start": int(label_start[i]), "sample_valid": bool(columns["sample_valid"][i])}
        for modality in MODALITIES:
            array = media[modality][i]
            record[modality] = (b"" if array is None else
                                np.ascontiguousarray(array, dtype=STORED_DTYPES[modality]).tobytes())
            record[f"bad_{modality}"] = bool(columns[f"bad_{modality}"][i])
        out.append(record)
    return out


def row_bytes(record: dict) -> int:
    """Stored payload of one pre-decoded row (for shard sizing)."""
    return sum(len(record[c]) for c in ("tokens", *MODALITIES)) + sum(
        len(record[c].encode()) for c in ("id", "text", "prompt")) + 16


# --- reading (training) ------------------------------------------------------------------
def _offsets_and_data(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """int64 offsets (rebased to 0) and the uint8 data of one binary Arrow array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    _, offsets, data = column.buffers()
    offsets = np.frombuffer(offsets, np.int32)[column.offset:column.offset + len(column) + 1].astype(np.int64)
    values = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    return offsets - offsets[0], values[offsets[0]:offsets[-1]]


def _binary(offsets: np.ndarray, data: np.ndarray) -> pa.Array:
    return pa.Array.from_buffers(pa.binary(), len(offsets) - 1,
                                 [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)])


def text_columns(tokens: pa.Array, label_start: np.ndarray, max_len: int) -> dict[str, np.ndarray]:
    """``input_ids``/``attention_mask``/``labels`` int64 ``[B, max_len]`` from stored token ids
    (exactly ``tokenizer.encode_sample``'s output)."""
    offsets, data = _offsets_and_data(tokens)
    lengths = np.diff(offsets) // 4
    if lengths.size and int(lengths.max()) > max_len:
        raise SpecMismatchError(f"a stored token sequence of {int(lengths.max())} ids is longer than "
                                f"max_text_tokens {max_len}")
    positions = np.arange(max_len)
    filled = positions[None, :] < lengths[:, None]
    input_ids = np.full((len(lengths), max_len), PAD_ID, np.int64)
    input_ids[filled] = data.view(np.int32)
    labelled = filled & (positions[None, :] >= np.asarray(label_start)[:, None])
    return {"input_ids": input_ids, "attention_mask": filled.astype(np.int64),
            "labels": np.where(labelled, input_ids, IGNORE_INDEX)}


def audio_to_wire(column: pa.Array) -> pa.Array:
    """Stored float16 log-mels → the wire's float32 values (one conversion over the whole batch)."""
    offsets, data = _offsets_and_data(column)
    wide = data.view(AUDIO_DTYPE).astype(np.float32).view(np.uint8)
    return _binary(offsets * 2, wide)


def to_wire(batch: pa.RecordBatch | pa.Table, spec: MediaSpec, shard_id: int) -> pa.Table:
    """A batch of pre-decoded rows → a wire-row table (what ``SampleProcessor.__call__`` emits)."""
    from multimodal.data.wire import wire_table

    n = batch.num_rows
    columns = text_columns(batch.column("tokens"), batch.column("label_start").to_numpy(),
                           spec.max_text_tokens)
    media = {"image": batch.column("image"), "video": batch.column("video"),
             "audio": audio_to_wire(batch.column("audio"))}
    for modality in MODALITIES:
        column = media[modality]
        if isinstance(column, pa.ChunkedArray):
            media[modality] = column = column.combine_chunks()
        columns[present_key(modality)] = np.diff(_offsets_and_data(column)[0]) > 0
        columns[f"bad_{modality}"] = batch.column(f"bad_{modality}").to_numpy(zero_copy_only=False)
    columns["shard_id"] = np.full(n, shard_id, np.int64)
    columns["sample_id"] = batch.column("sample_id").to_numpy()
    columns["sample_valid"] = batch.column("sample_valid").to_numpy(zero_copy_only=False)
    return wire_table(columns, media)


def iter_unit_batches(uri: str, batch_size: int, row_group: int = -1,
                      extra_columns: Sequence[str] = ()) -> Iterator[pa.RecordBatch]:
    """Record batches of one pre-decoded shard (one row group, or all when ``row_group`` < 0);
    ``extra_columns`` (e.g. ``text``, for evaluation) are read besides ``READ_COLUMNS``."""
    import pyarrow.parquet as pq

    from multimodal import fs

    filesystem, inner = fs.filesystem_for(uri)
    with filesystem.open_input_file(inner) as handle:
        parquet = pq.ParquetFile(handle)
        groups = [row_group] if row_group >= 0 else None
        yield from parquet.iter_batches(batch_size=batch_size, row_groups=groups, columns=[*READ_COLUMNS, *extra_columns])


class PredecodedUnitReader:
    """The "decode" actor of a pre-decoded dataset: reads read units and slices/copies them into
    wire rows (same input and output as ``pipeline.ParquetUnitDecoder``)."""

    def __init__(self, spec: MediaSpec | dict, shard_names: Sequence[str], batch_size: int = 256):
        self.spec = spec if isinstance(spec, MediaSpec) else MediaSpec(**spec)
        self.shard_index = {name: i for i, name in enumerate(shard_names)}
        self.batch_size = int(batch_size)

    def __call__(self, units: dict) -> Iterator[pa.Table]:
        for path, row_group in zip(units["path"], units["row_group"]):
            yield from self.read_unit(str(path), int(row_group))

    def read_unit(self, uri: str, row_group: int = -1) -> Iterator[pa.Table]:
        """Wire-row tables of one row group (or of the whole shard when ``row_group`` < 0)."""
        shard_id = self.shard_index.get(posixpath.basename(uri), -1)
        for batch in iter_unit_batches(uri, self.batch_size, row_group):
            yield to_wire(batch, self.spec, shard_id)


def read_predecoded_units(units: dict, spec: dict, shard_names: Sequence[str], batch_size: int = 256
                          ) -> Iterator[pa.Table]:
    """A Ray Data task function: the wire-row tables of a batch of read units."""
    yield from PredecodedUnitReader(spec, shard_names, batch_size)(units)


__all__ = ["FORMAT", "PREDECODED_SCHEMA", "PREDECODED_SCHEMA_VERSION", "SpecMismatchError", "is_predecoded",
           "check_spec", "describe_spec", "tokenizer_uri", "dataset_tokenizer", "tokenizer_sha256",
           "encode_rows", "row_bytes", "text_columns", "audio_to_wire", "to_wire", "PredecodedUnitReader",
           "read_predecoded_units"]
