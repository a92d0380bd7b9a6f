"""What ``--data`` names, resolved at preflight: packed shards, a WebDataset tar prefix, or a manifest.

- **Packed shards** (``slm-make-shards`` output, raw or pre-decoded): their ``_dataset.json``.
- **WebDataset tars** (``000000.tar`` ... as ``webdataset.ShardWriter``/img2dataset write them):
  indexed once (``data/tar_index.py``) and the index cached in the run's own storage,
  ``<storage_path>/<name>/data/<role>-wds-index.json``; the tars are read in place.
- **A CSV/JSONL manifest** (``.csv``, ``.jsonl``, ``.ndjson``, ``.json``): packed for the user into
  raw shards under ``<storage_path>/<name>/data/<role>/`` (progress on stderr). A later run of the
  same name reuses them; a manifest that changed since is refused (one line) rather than repacked
  under a half-trained run.
"""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from dataclasses import dataclass
from typing import Any

from multimodal import fs
from multimodal.job_config import JobConfig

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".json")
SOURCE_NAME = "_source.json"  # beside a manifest's packed shards: which manifest, which bytes
ROLE_FOLDERS = {"training": "train", "validation": "val"}


class PreflightError(RuntimeError):
    """Something the run needs is missing; the message says what and how to fix it."""


@dataclass
class TrainData:
    """The training shards as the driver sees them. ``kind``: ``shards`` (a ``_dataset.json``),
    ``webdataset`` (an indexed tar prefix) or ``manifest`` (counted only: a dry run packs nothing)."""

    uri: str
    shard_names: list[str]
    shard_rows: list[int]
    rows: int
    bytes: int
    modalities: dict[str, Any]
    kind: str = "shards"
    summary: Any = None


def check_writable(uri: str) -> None:
    """Write and remove a probe object under ``uri``."""
    probe = fs.join(uri, f".write-probe-{uuid.uuid4().hex[:8]}")
    try:
        fs.write_bytes_atomic(probe, b"ok")
        filesystem, path = fs.filesystem_for(probe)
        filesystem.delete_file(path)
    except OSError as exc:
        raise PreflightError(f"storage path {uri} is not writable: {str(exc).splitlines()[0]}") from None


def is_manifest(uri: str) -> bool:
    """A CSV/JSONL manifest file (by its name), not a shard prefix."""
    return str(uri).lower().rstrip("/").endswith(MANIFEST_SUFFIXES) and not str(uri).endswith("_dataset.json")


def _from_summary(uri: str, summary, kind: str) -> TrainData:
    return TrainData(uri=uri, shard_names=[s["path"] for s in summary.shards],
                     shard_rows=[int(s["rows"]) for s in summary.shards], rows=summary.rows,
                     bytes=summary.bytes, modalities=summary.modalities, kind=kind, summary=summary)


def describe_data(uri: str, role: str = "training", run: str | None = None, dry_run: bool = False) -> TrainData:
    """Resolve ``uri`` (see the module docstring); fail with a clear message when the data is
    missing. ``run``: the run's URI, where a tar index is cached and a manifest is packed."""
    from multimodal.data.schema import read_summary
    from multimodal.data.tar_index import TarIndexError, index_prefix, is_tar_prefix

    try:
        if is_manifest(uri):
            return _manifest_data(uri, role, run, dry_run)
        summary = None if str(uri).endswith(".tar") else read_summary(uri)
        if summary is None and is_tar_prefix(uri):
            cache = None
            if run:
                check_writable(run)  # the index is cached under the run
                cache = fs.join(run, "data", f"{ROLE_FOLDERS.get(role, role)}-wds-index.json")
            return _from_summary(uri, index_prefix(uri, cache), "webdataset")
    except (OSError, TarIndexError) as exc:
        raise PreflightError(f"{role} data {uri} is not reachable: {str(exc).splitlines()[0]}") from None
    if summary is None:
        raise PreflightError(f"{role} data {uri} has no _dataset.json shard summary and no .tar shards; "
                             f"give a manifest (.csv/.jsonl), a WebDataset tar prefix, or shards packed "
                             f"with 'slm-make-shards MANIFEST --out {uri}'")
    if summary.rows == 0:
        raise PreflightError(f"{role} data {uri} is empty (0 rows in _dataset.json)")
    return _from_summary(uri, summary, "shards")


def _manifest_data(manifest: str, role: str, run: str | None, dry_run: bool) -> TrainData:
    """A manifest's packed shards under the run (packed now unless already there)."""
    from multimodal.data.make_shards import ManifestError, make_shards, read_manifest
    from multimodal.data.schema import read_summary

    if run is None:
        raise PreflightError(f"{role} data {manifest} is a manifest; pack it with "
                             f"'slm-make-shards {manifest} --out s3://BUCKET/PREFIX' and pass that prefix")
    target = fs.join(run, "data", ROLE_FOLDERS.get(role, role))
    try:
        digest = hashlib.sha256(fs.read_bytes(manifest)).hexdigest()
        summary, source = read_summary(target), _read_source(target)
        if summary is not None and source is not None:
            if source["sha256"] != digest:
                raise PreflightError(f"{role} data {manifest} changed since this run packed it into {target}; "
                                     f"start a run with a new --name (or remove {target})")
            print(f"{role} data: reusing {target} (packed from {manifest})", flush=True)
            return _from_summary(target, summary, "shards")
        if dry_run:
            rows = sum(1 for _ in read_manifest(manifest))
            return TrainData(uri=target, shard_names=[], shard_rows=[], rows=rows, bytes=0, modalities={},
                             kind="manifest")
        check_writable(run)
        print(f"{role} data: packing manifest {manifest} into {target} (once: later runs named like "
              f"this one reuse it)", flush=True)
        summary = make_shards(manifest, target, progress=sys.stderr, overwrite=True)
        fs.write_bytes_atomic(fs.join(target, SOURCE_NAME),
                              json.dumps({"manifest": manifest, "sha256": digest}).encode())
    except FileNotFoundError:
        raise PreflightError(f"{role} data {manifest}: manifest not found") from None
    except ManifestError as exc:
        raise PreflightError(f"{role} data {exc}") from None
    return _from_summary(target, summary, "shards")


def _read_source(target: str) -> dict | None:
    uri = fs.join(target, SOURCE_NAME)
    try:
        return json.loads(fs.read_bytes(uri).decode()) if fs.exists(uri) else None
    except (OSError, ValueError):
        return None


def check_data_spec(job: JobConfig, data: TrainData, role: str = "training") -> None:
    """Pre-decoded shards must be made for the model's media spec (one line naming both)."""
    from multimodal.data import predecoded

    try:
        predecoded.check_spec(data.summary, job.model.resolve().media, data.uri, job.model.preset)
    except predecoded.SpecMismatchError as exc:
        raise PreflightError(f"{role} data {exc}") from None


def check_data_tokenizer(data: TrainData, tokenizer_uri: str, role: str = "training") -> None:
    """Pre-decoded shards hold token ids: the run's tokenizer must be the one they were made with."""
    from multimodal.data import predecoded

    summary = data.summary
    if not predecoded.is_predecoded(summary):
        return
    if predecoded.tokenizer_sha256(fs.read_bytes(tokenizer_uri).decode()) != summary.decoded["tokenizer_sha256"]:
        raise PreflightError(f"{role} data {data.uri} was tokenized with {predecoded.tokenizer_uri(data.uri, summary)}"
                             f", not with this run's {tokenizer_uri}; use the dataset's tokenizer (leave "
                             f"data.tokenizer unset) or re-pack with --tokenizer {tokenizer_uri}")


def storage_estimate(data: TrainData) -> dict[str, Any]:
    """The storage calculator's view of the training data (from its summary or tar index)."""
    from storage_calc.measure import from_summary, measure

    if data.summary is not None:
        source = "tar-index" if data.kind == "webdataset" else "shard-summary"
        return from_summary(data.uri, data.summary.to_dict(), source=source).to_dict()
    if data.kind == "manifest":
        return {"uri": data.uri, "rows": data.rows, "note": "manifest not packed yet (dry run)"}
    return measure(data.uri).to_dict()


__all__ = ["TrainData", "PreflightError", "describe_data", "check_writable", "check_data_spec", "check_data_tokenizer",
           "storage_estimate", "is_manifest"]
