"""The streaming Ray Dataset for training: shards (Parquet or WebDataset) → decoded fixed-shape rows.

``build_dataset(uri, spec, tokenizer)`` streams the Parquet shards listed in
``<uri>/_dataset.json`` (or ``.tar`` WebDataset shards) from a local path or S3 and decodes every
sample on CPU in ``map_batches``: images with Pillow, audio with soundfile + torchaudio,
video with PyAV, text with the ``tokenizers`` tokenizer. For Parquet the dataset is one item per
row group ("read unit"); each decode task (``decode_units`` running a ``ParquetUnitDecoder``, kept
in Ray's reusable worker process between tasks and epochs; ``decode_actors=True``: an actor pool)
reads its row group from the store itself, ``batch_size`` rows at a time, so encoded bytes never
pass through the object store (``read_in_decoder=False`` uses ``ray.data.read_parquet`` tasks instead). WebDataset tars are read
by ``ray.data.read_webdataset`` tasks and decoded by ``SampleProcessor`` actors. Pre-decoded
shards (``slm-make-shards --decode``, ``data/predecoded.py``) are read by ``read_predecoded_units``
tasks, which only slice and copy what ``SampleProcessor`` wrote when the shards were packed.

Output columns: **wire rows** (``data/wire.py``): the text keys and ``<m>_present`` masks of
``multimodal/batch.py``, each modality as one binary value (uint8 pixels / float32 log-mel bytes,
empty when absent; ``loader.iter_training_batches`` makes dense normalised tensors of them), plus

- ``shard_id`` int64: index of the row's shard in the summary's shard list (or in the sorted
  list of all tars under the prefix); stable whatever ``shards=`` subset is read;
- ``sample_id`` int64: unique per sample (the row number in the whole dataset for Parquet, a 63-bit hash of
  ``<tar name>/<key>`` for WebDataset), for exactly-once checks;
- ``bad_image``/``bad_audio``/``bad_video`` bool: the sample had that modality but it failed to
  decode (its value is empty and ``<m>_present`` is False);
- ``sample_valid`` bool: False when the sample had media and *all* of them failed (its caption
  describes something that is not there), or when it has neither text nor media. Invalid rows are
  **kept** in the dataset so the counts survive to the consumer; ``loader.iter_training_batches``
  drops them and counts them.

A run of more than ``max_consecutive_failures`` media decode failures in one shard (no successful
decode in between) raises ``DatasetBrokenError`` naming the shard: that is a broken dataset, not
a few bad files. So does a modality whose decode failure rate is far above a corrupt-file rate
(``failure_rate.py``: over 50 % after 32 tries), naming the modality and its first error. S3 endpoint and credentials come from the AWS_* environment; they are put into
the read and decode tasks' runtime env so every Ray worker sees them. Transient S3 errors are
retried with exponential backoff by the pyarrow S3 filesystem (``fs.S3_RETRY_ATTEMPTS``) and again
by Ray Data's retrying filesystem wrapper before a read fails.
"""

# ~425 lines: the one decode path (SampleProcessor, its Parquet read units) and build_dataset that
# streams it belong together; the Ray Data plumbing is in ray_plan.py, the wire format in wire.py.
from __future__ import annotations

import hashlib
import os
import posixpath
import sys
import uuid
from collections.abc import Iterator, Sequence

import numpy as np

from multimodal import fs
from multimodal.batch import MODALITIES, empty_text, present_key
from multimodal.config import MediaSpec
from multimodal.data import schema
from multimodal.data.decode import COMPACT_DECODERS, MediaDecodeError
from multimodal.data.failure_rate import DEFAULT_MAX_FAILURE_RATE, DatasetBrokenError, ModalityFailureRate
from multimodal.data.predecoded import is_predecoded, read_predecoded_units
from multimodal.data.ray_plan import compute, decode_cpus, read_tasks, task_runtime_env, unit_items, with_bin_bytes
from multimodal.data.tokenizer import as_tokenizer, encode_sample
from multimodal.data.webdataset import list_tar_shards, map_members, tar_name
from multimodal.data.wire import wire_table

EXTRA_COLUMNS: tuple[str, ...] = ("shard_id", "sample_id", "bad_image", "bad_audio", "bad_video",
                                  "sample_valid")
DEFAULT_BATCH_SIZE = 32
DEFAULT_CONCURRENCY = 2
DEFAULT_READ_BIN_BYTES = 8 * 1024**2  # Parquet bytes per read task
TARGET_BLOCK_BYTES = 16 * 1024**2  # decoded bytes per block
MAX_UNIT_BLOCKS = 4096  # read units (row groups) are grouped into at most this many blocks
# rows ParquetUnitDecoder reads and decodes per step: every step's output becomes Arrow columns in
# the actor, so bigger steps cost less per row (jobs/bench_data.py: images +5-10 % at 256 vs 32);
# a step never spans row groups, so an actor still holds one row group at most
DEFAULT_UNIT_BATCH_ROWS = 256
WDS_META = ("__key__", "__url__")


def wds_sample_id(shard: str, key: str) -> int:
    digest = hashlib.blake2b(f"{shard}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def _as_str(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, float) and np.isnan(value):
        return ""
    return str(value)


def _as_bytes(value) -> bytes | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, np.ndarray):  # a decoded image from a wds decoder: not supported here
        return None
    return bytes(value)


class SampleProcessor:
    """Decodes a batch of shard rows into contract rows; usable in and outside Ray.

    ``tokenizer``: a ``tokenizers.Tokenizer``, its JSON string, or a ``tokenizer.json`` path/URI.
    ``shard_names``: the full, ordered shard list, so ``shard_id`` and error messages are right.
    """

    def __init__(self, spec: MediaSpec | dict, tokenizer, shard_names: Sequence[str],
                 max_consecutive_failures: int = 100, torch_threads: int | None = 1,
                 max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE):
        if torch_threads:  # torch (audio only) is imported lazily: it costs seconds of actor start
            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(torch_threads)
            else:
                os.environ["OMP_NUM_THREADS"] = str(torch_threads)  # read when torch is imported
        self.spec = spec if isinstance(spec, MediaSpec) else MediaSpec(**spec)
        self.tokenizer = as_tokenizer(tokenizer)
        self.shard_names = list(shard_names)
        self.shard_index = {name: i for i, name in enumerate(self.shard_names)}
        self.max_consecutive_failures = int(max_consecutive_failures)
        self.failure_runs: dict[int, int] = {}
        self.failure_rate = ModalityFailureRate(max_failure_rate)

    # rows in the Parquet shard schema -------------------------------------------------------
    def _rows_from_batch(self, batch: dict) -> list[dict]:
        n = len(next(iter(batch.values()))) if batch else 0
        if "__key__" in batch:
            return self._rows_from_wds(batch, n)
        paths = batch.get("path")
        rows = []
        for i in range(n):
            shard = posixpath.basename(str(paths[i])) if paths is not None else ""
            row = {"shard_id": self.shard_index.get(shard, -1),
                   "sample_id": int(batch["sample_id"][i]) if "sample_id" in batch else i,
                   "text": _as_str(batch["text"][i]) if "text" in batch else "",
                   "prompt": _as_str(batch["prompt"][i]) if "prompt" in batch else ""}
            for modality in MODALITIES:
                row[modality] = _as_bytes(batch[modality][i]) if modality in batch else None
            rows.append(row)
        return rows

    def _rows_from_wds(self, batch: dict, n: int) -> list[dict]:
        suffixes = [c for c in batch if c not in WDS_META]
        rows = []
        for i in range(n):
            key = _as_str(batch["__key__"][i])
            shard = tar_name(_as_str(batch["__url__"][i])) if "__url__" in batch else ""
            members = {s: _as_bytes(batch[s][i]) for s in suffixes}
            mapped = map_members(key, members)
            mapped["shard_id"] = self.shard_index.get(shard, -1)
            mapped["sample_id"] = wds_sample_id(shard, key)
            rows.append(mapped)
        return rows

    # decoding --------------------------------------------------------------------------------
    def _note(self, shard_id: int, ok: bool, error: Exception | None = None) -> None:
        if ok:
            self.failure_runs[shard_id] = 0
            return
        run = self.failure_runs.get(shard_id, 0) + 1
        self.failure_runs[shard_id] = run
        if run > self.max_consecutive_failures:
            name = self.shard_names[shard_id] if 0 <= shard_id < len(self.shard_names) else "<unknown shard>"
            raise DatasetBrokenError(
                f"shard {name}: {run} consecutive samples with undecodable media (limit "
                f"{self.max_consecutive_failures}); the dataset looks broken. Last error: {error}")

    def _decode(self, rows: list[dict], decoders: dict) -> tuple[dict[str, np.ndarray], dict[str, list]]:
        """Text/mask/extra columns and, per modality, the decoded arrays (None where absent/bad)."""
        n, length = len(rows), self.spec.max_text_tokens
        out = {**empty_text(self.spec, n), "shard_id": np.zeros(n, np.int64),
               "sample_id": np.zeros(n, np.int64), "sample_valid": np.zeros(n, bool)}
        media: dict[str, list] = {m: [None] * n for m in MODALITIES}
        for modality in MODALITIES:
            out[f"bad_{modality}"] = np.zeros(n, bool)
        for i, row in enumerate(rows):
            shard_id = int(row["shard_id"])
            out["shard_id"][i] = shard_id
            out["sample_id"][i] = int(row["sample_id"])
            had_media = good_media = 0
            for modality in MODALITIES:
                data = row.get(modality)
                if data is None:
                    continue
                had_media += 1
                try:
                    media[modality][i] = decoders[modality](data, self.spec)
                except MediaDecodeError as exc:
                    out[f"bad_{modality}"][i] = True
                    self.failure_rate.note(modality, exc)
                    self._note(shard_id, False, exc)
                    continue
                good_media += 1
                self.failure_rate.note(modality)
                self._note(shard_id, True)
            text, prompt = row.get("text") or "", row.get("prompt") or ""
            ids, mask, labels = encode_sample(self.tokenizer, text, prompt, length)
            out["input_ids"][i], out["attention_mask"][i], out["labels"][i] = ids, mask, labels
            out["sample_valid"][i] = good_media > 0 if had_media else bool(text)
        for modality in MODALITIES:
            out[present_key(modality)] = np.array([a is not None for a in media[modality]], dtype=bool)
        return out, media

    def decode_compact(self, rows: list[dict]) -> tuple[dict[str, np.ndarray], dict[str, list]]:
        """Rows in the shard schema → (text/mask/extra columns, per modality the compact arrays:
        uint8 pixels, float32 log-mels, None where absent or bad): what the wire rows and the
        pre-decoded shards (``predecoded.py``) hold."""
        return self._decode(rows, COMPACT_DECODERS)

    def __call__(self, batch: dict):
        """A batch of shard rows → a ``pyarrow.Table`` of wire rows (``data/wire.py``): what the
        Ray pipeline ships."""
        out, media = self.decode_compact(self._rows_from_batch(batch))
        return wire_table(out, media)


PARQUET_READ_COLUMNS: tuple[str, ...] = tuple(c for c in schema.SHARD_COLUMNS
                                             if not c.endswith("_ext") and c != "id")


class ParquetUnitDecoder(SampleProcessor):
    """Reads Parquet read units (one row group of one shard) from the store and decodes them.

    The Ray pipeline's decode actors run this: reading in the actor that decodes (rather than
    in separate ``read_parquet`` tasks) keeps the encoded bytes out of the object store and
    needs no extra worker processes; ``batch_size`` rows at a time (never more than one row group)
    are read and decoded. Input: a batch of units (``path``, ``row_group``; -1 =
    the whole shard); output: wire-row batches, yielded as they are decoded.
    """

    def __init__(self, spec: MediaSpec | dict, tokenizer, shard_names: Sequence[str],
                 max_consecutive_failures: int = 100, batch_size: int = DEFAULT_UNIT_BATCH_ROWS):
        super().__init__(spec, tokenizer, shard_names, max_consecutive_failures)
        self.batch_size = int(batch_size)

    def __call__(self, units: dict) -> Iterator:
        for path, row_group in zip(units["path"], units["row_group"]):
            yield from self.decode_unit(str(path), int(row_group))

    def decode_unit(self, uri: str, row_group: int = -1) -> Iterator:
        """Wire-row tables of one row group (or of the whole shard when ``row_group`` < 0)."""
        for data in iter_shard_batches(uri, self.batch_size, row_group):
            yield SampleProcessor.__call__(self, data)


_DECODER_CACHE: dict[str, ParquetUnitDecoder] = {}  # per worker process: decode_units' decoders


def decode_units(units: dict, spec: dict, tokenizer: str, shard_names: Sequence[str],
                 max_consecutive_failures: int = 100, batch_size: int = DEFAULT_UNIT_BATCH_ROWS,
                 dataset_id: str = "") -> Iterator:
    """A Ray Data task function: ``ParquetUnitDecoder`` over a batch of read units. The decoder
    is kept in the worker process (Ray reuses its workers across tasks and epochs), so a later
    task or epoch of the same dataset (``dataset_id``: one per ``build_dataset``) starts without
    building it again and its failure counts carry on, as in one decode actor."""
    key = hashlib.blake2b(repr((spec, tokenizer, tuple(shard_names), max_consecutive_failures, batch_size,
                                dataset_id)).encode(), digest_size=16).hexdigest()
    decoder = _DECODER_CACHE.get(key)
    if decoder is None:
        _DECODER_CACHE.clear()  # one dataset's decoder per process at a time
        decoder = _DECODER_CACHE[key] = ParquetUnitDecoder(spec, tokenizer, shard_names, max_consecutive_failures,
                                                           batch_size)
    yield from decoder(units)


def iter_shard_batches(uri: str, batch_size: int, row_group: int = -1) -> Iterator[dict[str, np.ndarray]]:
    """Batches of raw shard rows (the columns ``SampleProcessor`` reads, plus ``path``) from one
    Parquet shard, local or S3: one row group, or the whole shard when ``row_group`` < 0."""
    import pyarrow.parquet as pq

    filesystem, inner = fs.filesystem_for(uri)
    with filesystem.open_input_file(inner) as handle:
        parquet = pq.ParquetFile(handle)
        columns = [c for c in PARQUET_READ_COLUMNS if c in parquet.schema_arrow.names]
        groups = [row_group] if row_group >= 0 else None
        for record_batch in parquet.iter_batches(batch_size=batch_size, row_groups=groups, columns=columns):
            data = {name: np.asarray(record_batch.column(name).to_pylist(), dtype=object)
                    for name in record_batch.schema.names}
            data["path"] = np.full(record_batch.num_rows, inner, dtype=object)
            yield data


def read_units(uri: str, shards: Sequence[str] | None = None) -> tuple[list[str], list[dict]]:
    """``(all shard names, units)`` of a Parquet shard prefix: one unit per row group of each
    selected shard (per shard when ``_dataset.json`` does not list row groups)."""
    summary = schema.read_summary(uri)
    if summary is None:
        raise FileNotFoundError(f"{uri}: no {schema.SUMMARY_NAME} (run slm-make-shards)")
    root = schema.dataset_root(uri)
    chosen = set(_select(summary.shard_names, shards, uri))
    units = []
    for shard in summary.shards:
        if shard["path"] not in chosen:
            continue
        groups = int(shard.get("row_groups") or 0)
        path = fs.join(root, shard["path"])
        units += [{"path": path, "row_group": g} for g in (range(groups) if groups else [-1])]
    return summary.shard_names, units


def resolve_shards(uri: str | Sequence[str], shards: Sequence[str] | None = None
                   ) -> tuple[str, list[str], list[str]]:
    """``(kind, all_shard_names, uris_to_read)`` for a Parquet prefix or WebDataset tars.

    ``kind`` is ``"parquet"`` or ``"webdataset"``. ``shards`` picks a subset by name.
    """
    if isinstance(uri, str) and not uri.endswith(".tar"):
        summary = schema.read_summary(uri)
        if summary is not None:
            root = schema.dataset_root(uri)
            names = summary.shard_names
            chosen = _select(names, shards, uri)
            return "parquet", names, [fs.join(root, n) for n in chosen]
    tars = list_tar_shards(uri)
    if not tars:
        raise FileNotFoundError(f"{uri}: no {schema.SUMMARY_NAME} (run slm-make-shards) and no .tar shards")
    names = [tar_name(t) for t in tars]
    by_name = dict(zip(names, tars))
    chosen = _select(names, shards, uri)
    return "webdataset", names, [by_name[n] for n in chosen]


def _select(names: list[str], shards: Sequence[str] | None, uri) -> list[str]:
    if shards is None:
        return list(names)
    wanted = [posixpath.basename(str(s)) for s in shards]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise ValueError(f"{uri}: unknown shard(s) {unknown}; the dataset has {len(names)} shards")
    return [n for n in names if n in set(wanted)]


def build_dataset(uri: str | Sequence[str], spec: MediaSpec, tokenizer, *,
                  shards: list[str] | None = None, max_consecutive_failures: int = 100,
                  batch_size: int = DEFAULT_BATCH_SIZE, concurrency: int | tuple[int, int] = DEFAULT_CONCURRENCY,
                  num_cpus: float = 1.0, runtime_env: dict | None = None,
                  override_num_blocks: int | None = None, read_num_cpus: float = 0.25,
                  read_bin_bytes: int = DEFAULT_READ_BIN_BYTES, read_in_decoder: bool = True,
                  unit_batch_rows: int = DEFAULT_UNIT_BATCH_ROWS, resources: dict[str, float] | None = None,
                  decode_actors: bool = False):
    """A ``ray.data.Dataset`` of decoded, fixed-shape rows (see the module docstring).

    ``uri``: a Parquet shard prefix with ``_dataset.json``, or a WebDataset prefix / ``.tar`` /
    list of tars (local or ``s3://``). ``tokenizer``: Tokenizer, JSON string, or tokenizer.json
    URI. ``concurrency``: decoders, a fixed count or a ``(min, max)`` range (Ray Data launches
    decode tasks as CPUs free up, up to the max; an actor pool autoscales within the range);
    ``num_cpus``/``resources``: what each asks for (``resources={"decode": n}`` puts
    them on CPU-only nodes: ``capacity.decoder_pool``); ``batch_size``: their rows per decode
    call on the ``read_parquet``/WebDataset paths.
    ``runtime_env``: for the read and decode tasks; default: the S3 endpoint and region only
    (credentials come from each node's environment or role, never from a runtime env), or none
    when the job's runtime env has them (``ray_plan.task_runtime_env``).
    ``read_in_decoder`` (Parquet only, default True): the decoders read their row groups
    themselves (``ParquetUnitDecoder``, ``unit_batch_rows`` rows per step), as Ray tasks
    (``decode_units``: at most ``max(concurrency)`` at once, in Ray's reusable worker processes,
    which keep their decoder between tasks and epochs) or, with ``decode_actors=True``, as an
    actor pool of ``concurrency`` (a ``(min, max)`` range autoscales), started again with every
    epoch's execution; ``read_in_decoder=False`` uses
    ``ray.data.read_parquet`` tasks, which ship the encoded bytes to the actors through the
    object store (slower on small machines: ``jobs/bench_data.py --ray-read``). WebDataset tars
    always use ``read_webdataset``. ``read_num_cpus``/``read_bin_bytes``/``override_num_blocks``:
    of those read tasks. Pre-decoded shards are read by plain tasks (no actors), at most
    ``max(concurrency)`` at once.
    """
    import ray

    kind, names, paths = resolve_shards(uri, shards)
    if not paths:
        raise ValueError(f"{uri}: no shards selected")
    context = ray.data.DataContext.get_current()
    # decoded rows of a 16 MiB block are ~1,200 images or ~160 videos at the slm-63m spec; Ray's
    # 128 MiB default would let two blocks fill a small object store
    context.target_max_block_size = min(context.target_max_block_size or TARGET_BLOCK_BYTES, TARGET_BLOCK_BYTES)
    if runtime_env is None:
        runtime_env = task_runtime_env(fs.is_s3(paths[0]))
    largest = concurrency[1] if isinstance(concurrency, tuple) else concurrency
    remote = {"num_cpus": decode_cpus(num_cpus, concurrency), "runtime_env": runtime_env,
              **({"resources": dict(resources)} if resources else {})}
    if kind == "parquet" and _predecoded(uri):
        _, units = read_units(uri, shards)
        # reading is a copy, so plain tasks do it: they run in Ray's reusable worker processes
        # (no torch import), where decode actors would be started again with every epoch
        return unit_items(units, MAX_UNIT_BLOCKS).map_batches(
            read_predecoded_units, fn_kwargs={"spec": spec.model_dump(), "shard_names": names,
                                              "batch_size": unit_batch_rows},
            batch_size=1, batch_format="numpy", compute=compute(_at_most(largest, len(units)), actors=False),
            num_cpus=remote["num_cpus"], runtime_env=runtime_env)
    args = (spec.model_dump(), as_tokenizer(tokenizer).to_str(), names, max_consecutive_failures)
    if kind == "parquet" and read_in_decoder and not decode_actors:
        _, units = read_units(uri, shards)
        # decode tasks in Ray's reusable worker processes (decode_units keeps its decoder there):
        # up to `largest` at once as CPUs free up; an actor pool would start again every epoch
        return unit_items(units, MAX_UNIT_BLOCKS).map_batches(decode_units, fn_args=(*args, unit_batch_rows,
                                                                                 uuid.uuid4().hex), batch_size=1,
                                         batch_format="numpy", compute=compute(_at_most(largest, len(units)), actors=False), **remote)
    if kind == "parquet" and read_in_decoder:
        _, units = read_units(uri, shards)
        return unit_items(units, MAX_UNIT_BLOCKS).map_batches(ParquetUnitDecoder, fn_constructor_args=(*args, unit_batch_rows),
                                         batch_size=1, batch_format="numpy", compute=compute(_at_most(concurrency, len(units))),
                                         **remote)
    dataset = read_tasks(kind, paths, PARQUET_READ_COLUMNS, runtime_env, override_num_blocks, read_num_cpus,
                         read_bin_bytes)
    return dataset.map_batches(SampleProcessor, fn_constructor_args=args, batch_size=batch_size,
                               batch_format="numpy", compute=compute(concurrency),
                               **{**remote, "runtime_env": with_bin_bytes(runtime_env, read_bin_bytes)})


def _at_most(concurrency: int | tuple[int, int], inputs: int) -> int | tuple[int, int]:
    """``concurrency`` capped at the number of read units: more decoders than units would idle
    (and Ray Data warns about it)."""
    if isinstance(concurrency, tuple):
        return (min(concurrency[0], max(1, inputs)), min(concurrency[1], max(1, inputs)))
    return min(concurrency, max(1, inputs))


def _predecoded(uri) -> bool:
    """True when ``uri`` is a pre-decoded shard prefix (``slm-make-shards --decode``)."""
    return isinstance(uri, str) and is_predecoded(schema.read_summary(uri))


__all__ = ["build_dataset", "SampleProcessor", "ParquetUnitDecoder", "decode_units", "read_units", "iter_shard_batches",
           "DatasetBrokenError",
           "resolve_shards",
           "EXTRA_COLUMNS", "wds_sample_id"]
